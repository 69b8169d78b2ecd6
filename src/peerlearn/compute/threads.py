"""How many intra-op threads a run uses (``compute.threads``).

Small models gain nothing from a second thread: one training step of a 64-unit MLP on 8 samples
is tens of microseconds of arithmetic, and splitting it costs more in synchronisation than it
saves. Worse, on a machine whose other cores are busy, a thread that waits for a taken core
stalls every step (OpenMP's default wait policy even spins while it waits). ``auto`` therefore
uses one thread below a measured amount of arithmetic per training step and all the cores the
process may use above it (docs/performance.md, "Threads").

A caller that has already lowered torch's thread count (``OMP_NUM_THREADS``, a sweep worker's
``torch.set_num_threads``) is respected: ``auto`` never goes above it.
"""

from __future__ import annotations

import os

import torch

from peerlearn.models.zoo import ModelSpec

# Forward FLOPs of one training step (batch x forward FLOPs per sample) below which one thread
# is used. benchmarks/threads_under_load.py --crossover, 2 cores (docs/performance.md): idle, two
# threads are 0.98x one for the quickstart's MLP (76 kFLOP per step), 1.29x at 3.2 MFLOP, 2.1x at
# 50 MFLOP, 1.40x for GN-LeNet (197 MFLOP); so the crossover lies between 0.1 and 3 MFLOP. Under
# load (average 8-10) one thread won everywhere; ``compute.threads = 1`` is the choice there.
AUTO_MIN_FLOPS_PER_STEP = 1e6


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def forward_flops_per_sample(spec: ModelSpec, one_sample: torch.Tensor) -> float | None:
    """Forward FLOPs of one sample, counted by torch's FLOP counter (None if it cannot)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            spec.module(one_sample)
        return float(counter.get_total_flops())
    except Exception:  # an architecture the counter cannot trace
        return None


def choose_threads(
    setting: int | str,
    spec: ModelSpec,
    one_sample: torch.Tensor,
    batch_size: int,
    device: str = "cpu",
) -> int:
    """The intra-op thread count for ``setting`` ("auto" or a number)."""
    if setting != "auto":
        return int(setting)
    ceiling = max(1, min(usable_cores(), torch.get_num_threads()))
    if device != "cpu":
        return ceiling  # the host only launches kernels; keep torch's choice
    flops = forward_flops_per_sample(spec, one_sample)
    if flops is not None and flops * batch_size < AUTO_MIN_FLOPS_PER_STEP:
        return 1
    return ceiling


def apply_threads(
    setting: int | str,
    spec: ModelSpec,
    one_sample: torch.Tensor,
    batch_size: int,
    device: str = "cpu",
) -> int:
    """Choose and set torch's intra-op thread count; returns it."""
    n = choose_threads(setting, spec, one_sample, batch_size, device)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
