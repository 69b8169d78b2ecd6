"""What the benchmark scripts share: timing, FLOPs counted from layer shapes, a matmul peak.

Imported by the scripts in this folder (``python benchmarks/X.py`` puts it on the path).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from peerlearn.models.zoo import build_model


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Wall seconds of one call of ``fn``, the work it queued on a GPU included."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """The fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    return min(timed(fn, device) for _ in range(repeats))


def matmul_flops(n: int, repeats: int = 3, device: str = "cpu", tf32: bool = False) -> float:
    """FLOP/s of an n x n by n x n float32 matrix product (2 n^3 FLOP): a practical peak."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    out = torch.empty(n, n, device=device)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return 2 * n**3 / best_time(lambda: torch.mm(a, b, out=out), repeats, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


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
    """Forward, forward + backward (weight gradients everywhere, input gradients past the first
    layer), and the "3 x forward" convention, in FLOP (2 per multiply-add)."""
    forward = 2 * sum(m for _, m in macs)
    weight_grads = 2 * sum(m for _, m in macs)
    input_grads = 2 * sum(m for _, m in macs[1:])  # the first layer's input is the data
    return {
        "forward": forward,
        "forward_backward": forward + weight_grads + input_grads,
        "three_times_forward": 3 * forward,
    }


def gn_lenet_flops() -> dict[str, int]:
    """``train_flops_per_sample`` of GN-LeNet on 3x32x32 images, 10 classes."""
    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    return train_flops_per_sample(layer_macs(spec.module, (3, 32, 32)))
