"""Batched training throughput vs sequential per-node training and a single large-batch model.

All figures are measured side by side in one run on the same machine and printed as ratios:

- sequential: each node trained alone, one after another, with a plain nn.Module + torch.optim.SGD
  (what a one-process-per-node framework does, serialized);
- batched: peerlearn's BatchedTrainer, all nodes' jobs in one call;
- ceiling: one model trained alone at batch 64 (samples/s), a practical ceiling on this CPU;
  ``--single-batches 16 32 64 128 480`` times one model at each of those batch sizes too.

    python benchmarks/train_throughput.py [--model gn_lenet|matrix_factorization] [--nodes 60]
        [--steps 16] [--batch 8] [--device cpu|cuda] [--single-batches B ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from common import best_time, gn_lenet_flops, matmul_flops
from peerlearn.compute.precision import use_tf32
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.models.zoo import build_model


def _data(model: str, n: int, g: torch.Generator):
    if model == "gn_lenet":
        x = torch.randn(n, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    else:  # ml-latest-small's shape: 610 users, 9,724 items
        users, items = 610, 9724
        x = torch.stack(
            [
                torch.randint(0, users, (n,), generator=g),
                torch.randint(0, items, (n,), generator=g),
            ],
            dim=1,
        )
        y = torch.randint(1, 11, (n,), generator=g).float() / 2
        spec = build_model(
            "matrix_factorization",
            input_shape=(2,),
            num_classes=None,
            info={"n_users": users, "n_items": items},
            seed=1,
        )
    return spec, x, y


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gn_lenet", choices=["gn_lenet", "matrix_factorization"])
    p.add_argument("--nodes", type=int, default=60)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="cuda: TF32 convolutions and matmuls")
    p.add_argument(
        "--single-batches",
        type=int,
        nargs="+",
        default=[],
        help="also time one model alone at these batch sizes (the best any batching could do "
        "with the same kernels), as ratios to the sequential baseline",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    use_tf32(args.tf32)  # strict float32 unless asked (PyTorch's default has TF32 convolutions)
    g = torch.Generator().manual_seed(0)
    n_data = 4096
    spec, x, y = _data(args.model, n_data, g)
    trainer = BatchedTrainer(spec, x, y, lr=0.05, device=args.device)
    init = spec.init_vector()
    jobs = [
        TrainJob(init.clone(), torch.randint(0, n_data, (args.steps, args.batch), generator=g))
        for _ in range(args.nodes)
    ]
    samples = args.nodes * args.steps * args.batch

    t_seq = best_time(
        lambda: [trainer.run_one_reference(j) for j in jobs], args.repeats, args.device
    )
    t_bat = best_time(lambda: trainer.run(jobs), args.repeats, args.device)

    def alone(b: int) -> float:
        """Samples/s of one model trained alone at batch ``b``, on as many samples as at 64."""
        batches = torch.randint(0, n_data, (max(1, args.steps * 64 // b), b), generator=g)
        job = TrainJob(init.clone(), batches)
        t = best_time(lambda: trainer.run_one_reference(job), args.repeats, args.device)
        return batches.numel() / t

    # batch 64 is the ceiling; the others (--single-batches) bound what any batching could buy
    single = {b: alone(b) for b in dict.fromkeys([64, *args.single_batches])}
    big_sps = single[64]

    res = {
        "model": args.model,
        "device": args.device,
        "nodes": args.nodes,
        "tf32": args.tf32,
        "steps": args.steps,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "sequential_samples_per_s": samples / t_seq,
        "batched_samples_per_s": samples / t_bat,
        "single_batch64_samples_per_s": big_sps,
        "batched_vs_sequential": t_seq / t_bat,
        "batched_vs_batch64_ceiling": (samples / t_bat) / big_sps,
    }
    for b in args.single_batches:
        res[f"alone_batch{b}_samples_per_s"] = single[b]
        res[f"alone_batch{b}_vs_sequential"] = single[b] / (samples / t_seq)
    if args.model == "gn_lenet":
        flop = gn_lenet_flops()["forward_backward"]
        res["batched_tflops"] = samples / t_bat * flop / 1e12
    if args.device == "cuda":
        res["matmul_fp32_tflops"] = matmul_flops(8192, device="cuda") / 1e12
        res["matmul_tf32_tflops"] = matmul_flops(8192, device="cuda", tf32=True) / 1e12
    for k, v in res.items():
        print(f"{k:>30}: {v:.3f}" if isinstance(v, float) else f"{k:>30}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
