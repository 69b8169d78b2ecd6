"""GPU exploration: which way of batching GN-LeNet training across nodes is fastest on a GPU.

Side by side in one run, GN-LeNet, ``--nodes`` nodes x ``--steps`` steps at batch 8:

- sequential: nn.Module + torch.optim.SGD, one node after another (``run_one_reference``);
- batched variants: grouped convolutions in channels-last or NCHW memory, ``vmap`` of ``grad``,
  and the grouped step captured once in a CUDA graph and replayed (no per-kernel launch cost),
  each in strict float32 and with TF32 convolutions;
- ceiling: one model alone at batch 64 and at batch nodes x 8;
- the device's measured matmul rate (float32, TF32), for FLOP/s against peak.

Also checks that every variant gives each node the reference trajectory (max abs difference).

    python benchmarks/gpu_variants.py [--nodes 60] [--steps 128] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.models.zoo import build_model

FLOP_PER_SAMPLE = 68.9e6  # GN-LeNet 3x32x32 forward + backward, counted in cpu_ceiling.py


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(tf32: bool, n: int = 8192) -> float:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    t = timed(lambda: [a @ b for _ in range(5)])
    torch.backends.cuda.matmul.allow_tf32 = False
    return 5 * 2 * n**3 / t


def nchw_stacked(self, p, x):
    """GNLeNet.stacked without the channels-last conversion."""
    j, b = x.shape[:2]
    h = x.transpose(0, 1).reshape(b, j * x.shape[2], *x.shape[3:])
    for k in (1, 2, 3):
        w = p[f"conv{k}.weight"]
        w = w.reshape(j * w.shape[1], *w.shape[2:])
        h = F.conv2d(h, w, p[f"conv{k}.bias"].reshape(-1), padding=2, groups=j)
        groups = getattr(self, f"gn{k}").num_groups * j
        gamma, beta = p[f"gn{k}.weight"].reshape(-1), p[f"gn{k}.bias"].reshape(-1)
        h = F.max_pool2d(F.relu(F.group_norm(h, groups, gamma, beta)), 2)
    h = h.reshape(b, j, -1).transpose(0, 1)
    return torch.baddbmm(p["fc.bias"].unsqueeze(1), h, p["fc.weight"].transpose(1, 2))


def graphed_run(trainer: BatchedTrainer, jobs: list[TrainJob]) -> torch.Tensor:
    """All jobs of equal step count: capture one step in a CUDA graph, replay it per step."""
    params = torch.stack([j.start for j in jobs]).to("cuda")
    all_idx = torch.stack([j.batches for j in jobs]).to("cuda")  # (J, steps, B)
    static_idx = all_idx[:, 0].clone()
    loss_sum = torch.zeros(len(jobs), device="cuda", dtype=torch.float64)

    def step() -> None:
        xb, yb = trainer.train_x[static_idx], trainer.train_y[static_idx]
        grads, losses = trainer._stacked_step(params, xb, yb)
        params.add_(grads, alpha=-trainer.lr)
        loss_sum.add_(losses)

    keep = params.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.enable_grad():
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.enable_grad():
        step()
    params.copy_(keep)
    loss_sum.zero_()
    for t in range(all_idx.shape[1]):
        static_idx.copy_(all_idx[:, t])
        graph.replay()
    return params.clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=60)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(0)
    n_data = 4096
    x = torch.randn(n_data, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_data,), generator=g)
    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    init = spec.init_vector()
    jobs = [
        TrainJob(
            init + 0.01 * torch.randn(init.shape, generator=g),
            torch.randint(0, n_data, (args.steps, 8), generator=g),
        )
        for _ in range(args.nodes)
    ]
    samples = args.nodes * args.steps * 8
    res: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "nodes": args.nodes,
        "steps": args.steps,
        "matmul_fp32_tflops": matmul_rate(False) / 1e12,
        "matmul_tf32_tflops": matmul_rate(True) / 1e12,
    }
    rows = []
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        tr = BatchedTrainer(spec, x, y, lr=0.05, device="cuda")
        ref = torch.stack([tr.run_one_reference(j) for j in jobs[:4]])
        t_seq = timed(lambda tr=tr: [tr.run_one_reference(j) for j in jobs], repeats=1)
        big = TrainJob(init.clone(), torch.randint(0, n_data, (args.steps, 64), generator=g))
        t_big = timed(lambda tr=tr, big=big: tr.run_one_reference(big))
        wide = TrainJob(
            init.clone(), torch.randint(0, n_data, (args.steps, 8 * args.nodes), generator=g)
        )
        t_wide = timed(lambda tr=tr, wide=wide: tr.run_one_reference(wide))
        base = {
            "tf32": tf32,
            "sequential_sps": samples / t_seq,
            "single_b64_sps": args.steps * 64 / t_big,
            "single_wide_sps": args.steps * 8 * args.nodes / t_wide,
        }
        variants: dict[str, Callable[[], torch.Tensor]] = {}
        cl = BatchedTrainer(spec, x, y, lr=0.05, device="cuda")
        variants["grouped_channels_last"] = lambda cl=cl: cl.run(jobs)
        vm = BatchedTrainer(spec, x, y, lr=0.05, device="cuda", stacked=False)
        variants["vmap_grad"] = lambda vm=vm: vm.run(jobs)
        variants["graph_channels_last"] = lambda cl=cl: graphed_run(cl, jobs)
        orig = type(spec.module).stacked
        for name, fn in variants.items():
            out = fn()
            err = (out[:4].cpu() - ref.cpu()).abs().max().item()
            t = timed(fn)
            rows.append(
                base
                | {
                    "variant": name,
                    "batched_sps": samples / t,
                    "vs_sequential": t_seq / t,
                    "vs_single_b64": (samples / t) / base["single_b64_sps"],
                    "tflops": samples * FLOP_PER_SAMPLE / t / 1e12,
                    "max_abs_diff_vs_reference": err,
                }
            )
            print(rows[-1], flush=True)
        type(spec.module).stacked = nchw_stacked
        try:
            for name in ("grouped_nchw", "graph_nchw"):
                nc = BatchedTrainer(spec, x, y, lr=0.05, device="cuda")
                fn = (
                    (lambda nc=nc: nc.run(jobs))
                    if name == "grouped_nchw"
                    else (lambda nc=nc: graphed_run(nc, jobs))
                )
                out = fn()
                err = (out[:4].cpu() - ref.cpu()).abs().max().item()
                t = timed(fn)
                rows.append(
                    base
                    | {
                        "variant": name,
                        "batched_sps": samples / t,
                        "vs_sequential": t_seq / t,
                        "vs_single_b64": (samples / t) / base["single_b64_sps"],
                        "tflops": samples * FLOP_PER_SAMPLE / t / 1e12,
                        "max_abs_diff_vs_reference": err,
                    }
                )
                print(rows[-1], flush=True)
        finally:
            type(spec.module).stacked = orig
    res["rows"] = rows
    # where the time goes in one batched step (grouped, channels-last, strict float32)
    torch.backends.cudnn.allow_tf32 = False
    from torch.profiler import ProfilerActivity, profile

    cl = BatchedTrainer(spec, x, y, lr=0.05, device="cuda")
    short = [TrainJob(j.start, j.batches[:8]) for j in jobs]
    cl.run(short)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        cl.run(short)
        sync()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18)
    print(table)
    res["profile_table"] = table
    print(f"{'variant':<24}{'tf32':>6}{'batched/s':>12}{'vs seq':>8}{'vs b64':>8}{'TFLOP/s':>9}")
    for r in rows:
        print(
            f"{r['variant']:<24}{r['tf32']!s:>6}{r['batched_sps']:>12.0f}"
            f"{r['vs_sequential']:>8.1f}{r['vs_single_b64']:>8.2f}{r['tflops']:>9.2f}"
            f"  err {r['max_abs_diff_vs_reference']:.1e}"
        )
    print({k: v for k, v in res.items() if k not in ("rows", "profile_table")})
    for r in rows[:1] + rows[5:6]:
        print(
            "sequential sps",
            r["sequential_sps"],
            "b64",
            r["single_b64_sps"],
            "wide",
            r["single_wide_sps"],
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
