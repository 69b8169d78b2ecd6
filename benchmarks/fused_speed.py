"""GN-LeNet with and without ``compute.fused``, side by side in one process.

Training as W1 runs it (``--jobs`` nodes side by side, batch 8, 3 steps per call, CIFAR-sized
images) and evaluation of one model at a time on a shared test set (the evaluator's CPU
default), each timed in turns (default, fused, default, ...; best of ``--repeats``), with the
float32 matmul rate measured in between. ``--eval-batches`` and ``--node-chunks`` also time the
fused evaluation at other batch sizes and nodes per call; ``--layouts`` the default path's
single-model forward in NCHW and channels-last memory.

    python benchmarks/fused_speed.py [--jobs 16] [--test 2000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import gn_lenet_flops
from peerlearn.compute import BatchedEvaluator, BatchedTrainer, TrainJob
from peerlearn.compute.fused import fused_spec
from peerlearn.models.zoo import build_model

BATCH, STEPS = 8, 3


def seconds(fn, clock=time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def matmul_rate(clock, n: int = 1024) -> float:
    """FLOP/s of an n x n float32 matrix product (``common.matmul_flops``) by ``clock``."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    return 2 * n**3 / min(seconds(lambda: torch.mm(a, b, out=out), clock) for _ in range(3))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=16, help="nodes trained side by side")
    p.add_argument("--calls", type=int, default=4, help="training calls per timing")
    p.add_argument("--test", type=int, default=2000, help="test images per evaluation")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval-batches", type=int, nargs="*", default=[])
    p.add_argument("--node-chunks", type=int, nargs="*", default=[])
    p.add_argument("--layouts", action="store_true")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this process's CPU seconds, not wall (with --threads 1 on a busy machine: "
        "time-slicing by other processes then does not count)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    base = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    specs = {"default": base, "fused": fused_spec(base)}
    if specs["fused"] is base:
        raise SystemExit("the fused kernel is not available here (see the warning)")
    train_x, train_y = torch.randn(5000, 3, 32, 32, generator=g), torch.randint(0, 10, (5000,))
    test_x, test_y = (
        torch.randn(args.test, 3, 32, 32, generator=g),
        torch.randint(0, 10, (args.test,)),
    )
    init = base.init_vector()
    starts = init + 0.01 * torch.randn(args.jobs, init.numel(), generator=g)
    batches = torch.randint(0, 5000, (args.calls, args.jobs, STEPS, BATCH), generator=g)
    eval_params = init + 0.01 * torch.randn(8, init.numel(), generator=g)
    flops = gn_lenet_flops()

    def train(spec) -> None:
        trainer = BatchedTrainer(spec, train_x, train_y, lr=0.01)
        for c in range(args.calls):
            trainer.run([TrainJob(starts[j], batches[c, j]) for j in range(args.jobs)])

    def evaluate(spec, batch: int = 500, chunk: int | None = None, k: int = 1) -> None:
        BatchedEvaluator(spec, test_x, test_y, batch_size=batch, node_chunk=chunk).evaluate(
            eval_params[:k]
        )

    variants = {f"train {name}": (lambda s=s: train(s)) for name, s in specs.items()}
    variants |= {f"eval {name}": (lambda s=s: evaluate(s)) for name, s in specs.items()}
    for b in args.eval_batches:
        variants[f"eval fused batch {b}"] = lambda b=b: evaluate(specs["fused"], batch=b)
    for c in args.node_chunks:
        variants[f"eval fused {c} nodes/call"] = lambda c=c: evaluate(specs["fused"], chunk=c, k=8)
    if args.layouts:
        variants["eval default NCHW"] = lambda: _eval_layout(base, eval_params[0], test_x, False)
        variants["eval default channels-last"] = lambda: _eval_layout(
            base, eval_params[0], test_x, True
        )
    work = {  # (samples, FLOP) per timed call
        "train": (args.calls * args.jobs * STEPS * BATCH, flops["forward_backward"]),
        "eval": (args.test, flops["forward"]),
    }
    for fn in variants.values():
        fn()  # warm-up (builds the kernel, oneDNN primitives)
    clock = time.process_time if args.cpu_time else time.perf_counter
    best = dict.fromkeys(variants, float("inf"))
    peak = 0.0
    for _ in range(args.repeats):
        peak = max(peak, matmul_rate(clock))
        for name, fn in variants.items():
            best[name] = min(best[name], seconds(fn, clock))
    rows = {}
    print(
        f"{torch.get_num_threads()} threads, float32 matmul 1024: {peak / 1e9:.1f} GFLOP/s "
        f"; timed by {'CPU' if args.cpu_time else 'wall'} seconds"
    )
    for name, t in best.items():
        kind = name.split()[0]
        samples, per = work[kind]
        if "nodes/call" in name:
            samples *= 8
        rate = samples * per / t
        rows[name] = {"seconds": t, "samples_per_s": samples / t, "gflops": rate / 1e9}
        print(
            f"{name:32s} {samples / t:9.0f} samples/s  {rate / 1e9:6.1f} GFLOP/s "
            f"= {rate / peak:.2f} of matmul"
        )
    for kind in ("train", "eval"):
        ratio = best[f"{kind} default"] / best[f"{kind} fused"]
        rows[f"{kind} fused / default"] = ratio
        print(f"{kind}: fused {ratio:.2f}x the default path's samples/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": peak / 1e9, "threads": torch.get_num_threads(), **rows}, f)


@torch.inference_mode()
def _eval_layout(spec, vec: torch.Tensor, x: torch.Tensor, channels_last: bool) -> None:
    """One model's plain forward (no hooks) over ``x`` in batches of 500, in one layout."""
    for s in range(0, len(x), 500):
        b = x[s : s + 500]
        if channels_last:
            b = b.contiguous(memory_format=torch.channels_last)
        spec.forward(vec, b).argmax(1)


if __name__ == "__main__":
    main()
