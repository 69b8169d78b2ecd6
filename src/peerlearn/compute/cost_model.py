"""The compute cost model: how long local training takes on each node.

Engine-independent: the simulator advances virtual time by it, a deployed node pads its real
training to it (``deploy.emulate_compute``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from peerlearn.config.schema import ComputeConfig


def compute_factors(cfg: ComputeConfig, n: int) -> np.ndarray:
    """Per-node slowdown factors (1 = nominal speed; a compute straggler has factor > 1).

    Explicit ``factors`` win; otherwise ``stragglers`` nodes (``straggler_ids``, or ids 0..k-1 as
    the DivShare artifact places its communication stragglers) are slowed ``slowdown`` times.
    """
    if cfg.factors is not None:
        return np.asarray(cfg.factors, dtype=np.float64)
    factors = np.ones(n)
    ids = cfg.straggler_ids if cfg.straggler_ids is not None else range(cfg.stragglers)
    factors[list(ids)] = cfg.slowdown
    return factors


def training_time(step_time_s: float, factor: float, steps: int) -> float:
    """k steps started at t finish at t + k * step_time * factor."""
    return steps * step_time_s * factor
