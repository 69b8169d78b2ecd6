"""Network presets: per-node link capacities, pairwise latencies and optional shared links."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from peerlearn.sim.flows import FlowNetwork

PRESETS: dict[str, str] = {
    "uniform": "every node at mbps up and down, latency_ms between every pair",
    "stragglers": "fast nodes at fast_mbps; `stragglers` nodes (ids 0..k-1) at fast_mbps/slowdown",
    "ideal": "infinite capacity and zero latency: every message arrives at once",
}


def mbps_to_Bps(mbps: float) -> float:
    """Megabits (1e6 bits) per second to bytes per second."""
    return mbps * 1e6 / 8.0


@dataclass
class NetworkSpec:
    """What the flow model needs; ``links``/``route`` leave room for Kollaps-style topologies."""

    up_Bps: np.ndarray  # (n,)
    down_Bps: np.ndarray  # (n,)
    latency_s: np.ndarray  # (n, n), zero diagonal
    links: list[float] = field(default_factory=list)
    route: Callable[[int, int], Sequence[int]] | None = None
    description: str = ""

    @property
    def n(self) -> int:
        return len(self.up_Bps)

    def to_flow_network(self) -> FlowNetwork:
        """A fresh flow model at time 0 (the spec itself is never mutated)."""
        return FlowNetwork(self.up_Bps, self.down_Bps, self.latency_s, self.links, self.route)


def build_network(
    preset: str,
    n: int,
    *,
    mbps: float = 100.0,
    fast_mbps: float = 60.0,
    slowdown: float = 5.0,
    stragglers: int = 0,
    straggler_ids: list[int] | None = None,
    latency_ms: float = 1.0,
    seed: int = 1,  # reserved for randomized presets (jittered capacities, traces)
) -> NetworkSpec:
    """Build a preset; ValueError names the parameter that is out of range."""
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; choose one of {sorted(PRESETS)}")
    if n < 1:
        raise ValueError(f"network needs n >= 1 nodes, got n={n}")
    if not latency_ms >= 0 or not np.isfinite(latency_ms):
        raise ValueError(f"latency_ms must be finite and >= 0, got {latency_ms}")
    latency = np.full((n, n), latency_ms / 1e3)
    np.fill_diagonal(latency, 0.0)

    if preset == "uniform":
        _check_positive("mbps", mbps)
        cap = np.full(n, mbps_to_Bps(mbps))
        desc = f"uniform: {n} nodes at {mbps:g} Mbps, {latency_ms:g} ms"
        return NetworkSpec(cap, cap.copy(), latency, description=desc)

    if preset == "stragglers":
        _check_positive("fast_mbps", fast_mbps)
        if not (np.isfinite(slowdown) and slowdown >= 1):
            raise ValueError(f"slowdown must be >= 1, got {slowdown}")
        slow = _straggler_ids(n, stragglers, straggler_ids)
        cap = np.full(n, mbps_to_Bps(fast_mbps))
        cap[slow] = mbps_to_Bps(fast_mbps / slowdown)  # symmetric: up = down, as in the artifact
        desc = (
            f"stragglers: {len(slow)} of {n} nodes at {fast_mbps / slowdown:g} Mbps, "
            f"others at {fast_mbps:g} Mbps, {latency_ms:g} ms"
        )
        return NetworkSpec(cap, cap.copy(), latency, description=desc)

    # ideal
    cap = np.full(n, np.inf)
    return NetworkSpec(cap, cap.copy(), np.zeros((n, n)), description="ideal: instant delivery")


def _check_positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def _straggler_ids(n: int, count: int, ids: list[int] | None) -> list[int]:
    """Stragglers are 0..count-1 by default (as in the DivShare artifact), or the given ids."""
    if count < 0 or count > n:
        raise ValueError(f"stragglers must be in 0..{n}, got {count}")
    if ids is None:
        return list(range(count))
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ValueError(f"straggler_ids out of range 0..{n - 1}: {bad}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"straggler_ids has duplicates: {ids}")
    if count not in (0, len(ids)):
        raise ValueError(f"stragglers={count} but straggler_ids lists {len(ids)} ids")
    return sorted(ids)
