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
import time

import torch
from torch import nn

from peerlearn.models.zoo import build_model


def layer_macs(module: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """Multiply-adds per sample of each convolution and linear layer, in call order."""
    macs: list[tuple[str, int]] = []

    def hook(name: str):
        def record(mod: nn.Module, inputs, output: torch.Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                macs.append((name, int(output[0].numel()) * k))
            else:  # nn.Linear
                macs.append((name, mod.in_features * mod.out_features))

        return record

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return macs


def train_flops_per_sample(macs: list[tuple[str, int]]) -> dict[str, int]:
    forward = 2 * sum(m for _, m in macs)
    weight_grads = 2 * sum(m for _, m in macs)
    input_grads = 2 * sum(m for _, m in macs[1:])  # the first layer's input is the data
    return {
        "forward": forward,
        "forward_backward": forward + weight_grads + input_grads,
        "three_times_forward": 3 * forward,
    }


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(n: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    return 2 * n**3 / _best_time(lambda: torch.mm(a, b, out=out), repeats) / 1e9


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

    return steps * batch / _best_time(train, repeats)


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
            peaks = {n: matmul_gflops(n, args.repeats) for n in args.sizes}
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
