"""This CPU's float32 ceiling vs what GN-LeNet training achieves on it.

1. Peak: torch float32 matrix multiply (n x n by n x n, 2 n^3 FLOP) at each size and thread count.
2. Achieved: one GN-LeNet (``peerlearn.models``, 3x32x32 inputs, 10 classes) trained with
   ``nn.Module`` + ``torch.optim.SGD`` at batch 64, in GFLOP/s from FLOPs counted on the layer
   shapes (below), and its ratio to the peak at the same thread count.

FLOPs per sample are counted from every convolution's and linear layer's shapes (one
multiply-add = 2 FLOP): forward = 2 x MACs; backward = 2 x MACs for the weight gradients plus
2 x MACs for the input gradients of every layer but the first (nothing needs the gradient of the
images). GroupNorm, ReLU, pooling and the optimizer are elementwise and left out (under 1%). The
common "3 x forward" convention is printed too.

    python benchmarks/cpu_ceiling.py [--sizes 1024 2048] [--threads 1 2] [--steps 8] [--json out]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from common import best_time, layer_macs, matmul_flops, train_flops_per_sample
from peerlearn.models.zoo import build_model


def lenet_samples_per_s(batch: int, steps: int, repeats: int) -> float:
    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    model = spec.module
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps, batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (steps, batch), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def train() -> None:
        for s in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[s]), y[s]).backward()
            opt.step()

    return steps * batch / best_time(train, repeats)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    macs = layer_macs(spec.module, (3, 32, 32))
    flops = train_flops_per_sample(macs)
    print(
        "GN-LeNet multiply-adds per sample (forward): " + ", ".join(f"{n} {m:,}" for n, m in macs)
    )
    print(
        f"  FLOP per sample: forward {flops['forward'] / 1e6:.1f} M, forward+backward "
        f"{flops['forward_backward'] / 1e6:.1f} M (3 x forward: "
        f"{flops['three_times_forward'] / 1e6:.1f} M)"
    )
    out: dict = {"layer_macs": dict(macs), "flops_per_sample": flops, "runs": []}
    before = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            peaks = {n: matmul_flops(n, args.repeats) / 1e9 for n in args.sizes}
            peak = max(peaks.values())
            sps = lenet_samples_per_s(args.batch, args.steps, args.repeats)
            achieved = sps * flops["forward_backward"] / 1e9
            row = {
                "threads": threads,
                "matmul_gflops": {str(n): v for n, v in peaks.items()},
                "peak_gflops": peak,
                "lenet_batch": args.batch,
                "lenet_samples_per_s": sps,
                "lenet_gflops": achieved,
                "achieved_over_peak": achieved / peak,
            }
            out["runs"].append(row)
            mm = ", ".join(f"{n}: {v:.1f}" for n, v in peaks.items())
            print(
                f"{threads} thread(s): matmul GFLOP/s {mm}; GN-LeNet batch {args.batch}: "
                f"{sps:.0f} samples/s = {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of peak"
            )
    finally:
        torch.set_num_threads(before)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
