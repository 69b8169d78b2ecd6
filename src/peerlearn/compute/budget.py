"""Memory a run will need, estimated before anything large is allocated.

A model is built first on PyTorch's ``meta`` device (shapes, no storage), which gives its exact
parameter count and, through one forward pass, its activations per sample (every torch
function's output, so any ``nn.Module`` is covered, not only its registered submodules). The
estimate adds what the simulator keeps per node (the model, a training snapshot, gradients, the
result), the activations of one batched training call, and the minibatch index buffers of one
local training. A run whose estimate is above this machine's physical memory is refused with
the numbers, instead of dying in the allocator (or being killed) minutes later.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: float32 copies of a node's model the simulator may hold (vector, snapshot, gradient, result)
MODEL_COPIES = 4
#: activations are kept for the backward pass and mirrored by their gradients (x3 for slack)
ACTIVATION_COPIES = 3
#: batched training calls on the CPU take this many jobs at once (compute.trainer's default)
CPU_JOBS_PER_CALL = 16


@dataclass
class Term:
    what: str
    keys: str  # the config keys that drive it
    nbytes: float


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class _OutputCounter(TorchFunctionMode):
    """Adds up the elements of every tensor a torch function returns (layers and the
    functional ops between them: F.relu, additions, pooling), whatever calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.total += out.numel()
        return out


def activations_per_sample(module: nn.Module, input_shape: tuple[int, ...], integer: bool) -> int:
    """Numbers the forward pass makes for one sample: the input plus every torch function's
    output (a meta forward pass; the input size if it fails).

    Counting function outputs rather than submodule outputs also covers a module that computes
    in its own forward with ``torch.nn.functional`` (any user module, the residual additions and
    ReLUs of ResNet-8); views are counted too, which errs on the safe side.
    """
    counter = _OutputCounter()
    x = torch.zeros((1, *input_shape), device="meta", dtype=torch.int64 if integer else None)
    try:
        with counter:
            module(x)
    except Exception:  # an architecture the meta device cannot run: the input alone
        return math.prod(input_shape)
    return math.prod(input_shape) + counter.total


def estimate(
    *,
    nodes: int,
    params: int,
    act_per_sample: int,
    batch_size: int,
    local_steps: int,
    device: str,
    model_keys: str,
) -> list[Term]:
    jobs = min(nodes, CPU_JOBS_PER_CALL) if device == "cpu" else nodes
    return [
        Term(
            f"{nodes} node models of {params:,} parameters",
            model_keys,
            float(nodes) * params * 4 * MODEL_COPIES,
        ),
        Term(
            f"activations of {jobs} x {batch_size} samples",
            f"train.batch_size = {batch_size}",
            float(jobs) * batch_size * act_per_sample * 4 * ACTIVATION_COPIES,
        ),
        Term(
            f"minibatch indices of {local_steps} x {batch_size} samples per node",
            f"train.local_steps = {local_steps} (x train.batch_size = {batch_size})",
            float(nodes) * local_steps * batch_size * 8,
        ),
    ]


def _gb(x: float) -> str:
    return f"{x / 1e9:,.1f} GB"


def check(terms: list[Term], available: int | None = None) -> None:
    """ValueError naming the largest term's config keys if the total exceeds ``available``
    (default: this machine's physical memory)."""
    available = physical_memory() if available is None else available
    total = sum(t.nbytes for t in terms)
    if not available or total <= available:
        return
    worst = max(terms, key=lambda t: t.nbytes)
    raise ValueError(
        f"{worst.keys}: this run needs about {_gb(total)} of memory ({worst.what}: "
        f"{_gb(worst.nbytes)}), more than this machine's {_gb(available)}"
    )
