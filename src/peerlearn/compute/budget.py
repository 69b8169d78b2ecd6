"""Memory a run will need, estimated before anything large is allocated.

A model is built first on PyTorch's ``meta`` device (shapes, no storage), which gives its exact
parameter count and, through one forward pass, its activations per sample. The estimate adds
what the simulator keeps per node (the model, a training snapshot, gradients, the result), the
activations of one batched training call, and the minibatch index buffers of one local training.
A run whose estimate is above this machine's physical memory is refused with the numbers, instead
of dying in the allocator (or being killed) minutes later.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

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


def activations_per_sample(module: nn.Module, input_shape: tuple[int, ...], integer: bool) -> int:
    """Numbers every layer outputs for one sample (a meta forward pass; input size if it fails)."""
    total = [math.prod(input_shape)]

    def hook(_m, _inp, out) -> None:
        if isinstance(out, torch.Tensor):
            total.append(out.numel())

    handles = [m.register_forward_hook(hook) for m in module.modules() if m is not module]
    try:
        module(
            torch.zeros((1, *input_shape), device="meta", dtype=torch.int64 if integer else None)
        )
    except Exception:  # an architecture the meta device cannot run: the input alone
        total = total[:1]
    finally:
        for h in handles:
            h.remove()
    return int(sum(total))


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
