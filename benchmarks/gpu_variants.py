"""GPU exploration: which way of batching GN-LeNet across nodes is fastest on a GPU.

Side by side in one run (GN-LeNet, ``--nodes`` nodes, batch 8, ``--steps`` steps), in strict
float32 and with TF32:

- training: the default batched path (grouped convolutions, each step replayed as a CUDA graph),
  the same without graphs, and ``vmap`` of ``grad``, against the nodes trained one after another
  with nn.Module + torch.optim.SGD; each variant's largest difference from that reference;
- evaluation on ``--test`` shared images: nodes per call x batch size, against sequential
  nn.Module evaluation.

    python benchmarks/gpu_variants.py [--nodes 60] [--steps 128] [--test 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from common import best_time, gn_lenet_flops
from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.precision import use_tf32
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.models.zoo import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=60)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    flops = gn_lenet_flops()
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
    rows: list[dict] = []
    for tf32 in (False, True):
        use_tf32(tf32)
        ref_tr = BatchedTrainer(spec, x, y, lr=0.05, device="cuda")
        ref = torch.stack([ref_tr.run_one_reference(j) for j in jobs[:4]])
        t_seq = best_time(lambda tr=ref_tr: [tr.run_one_reference(j) for j in jobs], 1, "cuda")
        variants = {
            "graphs": BatchedTrainer(spec, x, y, lr=0.05, device="cuda"),
            "eager": BatchedTrainer(spec, x, y, lr=0.05, device="cuda", cuda_graphs=False),
            "vmap": BatchedTrainer(spec, x, y, lr=0.05, device="cuda", stacked=False),
        }
        for name, tr in variants.items():
            err = (tr.run(jobs)[:4] - ref).abs().max().item()
            t = best_time(lambda tr=tr: tr.run(jobs), 3, "cuda")
            rows.append(
                {
                    "what": "train",
                    "variant": name,
                    "tf32": tf32,
                    "samples_per_s": samples / t,
                    "sequential_samples_per_s": samples / t_seq,
                    "vs_sequential": t_seq / t,
                    "tflops": samples * flops["forward_backward"] / t / 1e12,
                    "max_abs_diff_vs_reference": err,
                }
            )
            print(rows[-1], flush=True)
    # evaluation
    tx = torch.randn(args.test, 3, 32, 32, generator=g)
    ty = torch.randint(0, 10, (args.test,), generator=g)
    params = torch.stack([j.start for j in jobs])
    for tf32 in (False, True):
        use_tf32(tf32)
        module = copy.deepcopy(spec.module).cuda()
        txd = tx.cuda()

        def sequential(module=module, txd=txd) -> None:
            with torch.inference_mode():
                for k in range(args.nodes):
                    spec.layout.load(module, params[k])
                    for s in range(0, args.test, 500):
                        module(txd[s : s + 500]).argmax(1)

        t_seq = best_time(sequential, 1, "cuda")
        for chunk in (1, 4, 16, 60):
            for batch in (500, 2000):
                ev = BatchedEvaluator(
                    spec, tx, ty, batch_size=batch, node_chunk=chunk, device="cuda"
                )
                t = best_time(lambda ev=ev: ev.evaluate(params), 2, "cuda")
                n = args.nodes * args.test
                rows.append(
                    {
                        "what": "eval",
                        "variant": f"chunk{chunk}_batch{batch}",
                        "tf32": tf32,
                        "samples_per_s": n / t,
                        "sequential_samples_per_s": n / t_seq,
                        "vs_sequential": t_seq / t,
                        "tflops": n * flops["forward"] / t / 1e12,
                        "max_abs_diff_vs_reference": float("nan"),
                    }
                )
                print(rows[-1], flush=True)
    print(
        f"{'what':<6}{'variant':<20}{'tf32':>6}{'samples/s':>12}{'seq/s':>10}{'vs seq':>8}"
        f"{'TFLOP/s':>9}"
    )
    for r in rows:
        print(
            f"{r['what']:<6}{r['variant']:<20}{r['tf32']!s:>6}{r['samples_per_s']:>12.0f}"
            f"{r['sequential_samples_per_s']:>10.0f}{r['vs_sequential']:>8.1f}{r['tflops']:>9.2f}"
            f"  err {r['max_abs_diff_vs_reference']:.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
