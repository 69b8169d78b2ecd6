"""The run's schedule of network changes, engine-independent (docs/dynamics.md).

``[dynamics]`` (capacity traces and generated patterns) and ``[churn]`` (availability traces and
the seeded on/off model) become lazy streams of changes in time order. The simulator applies
them as events (``sim/dynamics.py``); the deployment reads each node's offline spans.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from peerlearn.network.churn import exponential_churn
from peerlearn.network.dynamics import diurnal, rotating_stragglers
from peerlearn.network.traces import (
    AvailabilityChange,
    CapacityChange,
    load_availability_trace,
    load_capacity_trace,
)

if TYPE_CHECKING:
    from peerlearn.experiment import Setup

Change = CapacityChange | AvailabilityChange


def capacity_changes(setup: Setup) -> Iterator[CapacityChange] | None:
    """The run's capacity changes in time order, or None when ``[dynamics]`` is off."""
    cfg = setup.cfg
    d = cfg.dynamics
    net = setup.network
    if d.kind == "none":
        return None
    if d.kind == "trace":
        assert d.trace is not None
        return iter(load_capacity_trace(d.trace, cfg.nodes, d.format, d.clients))
    if d.kind == "rotating_stragglers":
        return rotating_stragglers(
            net.up_Bps,
            net.down_Bps,
            setup.compute_factors,
            period_s=d.period_s,
            count=d.stragglers,
            slowdown=d.slowdown,
            slow_compute=d.slow_compute,
            seed=cfg.seed,
        )
    return diurnal(
        net.up_Bps,
        net.down_Bps,
        period_s=d.period_s,
        amplitude=d.amplitude,
        step_s=d.step_s,
        seed=cfg.seed,
    )


def availability_changes(setup: Setup) -> Iterator[AvailabilityChange] | None:
    """The run's availability changes in time order, or None when ``[churn]`` is off."""
    cfg = setup.cfg
    c = cfg.churn
    if c.kind == "none":
        return None
    if c.kind == "trace":
        assert c.trace is not None
        horizon = cfg.stop.virtual_time_s
        return load_availability_trace(c.trace, cfg.nodes, c.format, c.clients, horizon)
    return exponential_churn(
        cfg.nodes,
        offline_fraction=c.offline_fraction,
        mean_offline_s=c.mean_offline_s,
        start_offline=c.start_offline,
        seed=cfg.seed,
    )


def build_schedule(setup: Setup) -> Iterator[Change] | None:
    """Capacity and availability changes merged in time order, or None when both are off."""
    caps, avail = capacity_changes(setup), availability_changes(setup)
    if caps is None and avail is None:
        return None
    streams = [s for s in (caps, avail) if s is not None]
    return heapq.merge(*streams, key=lambda c: c.time_s)


def node_offline_spans(setup: Setup) -> list[list[tuple[float, float]]] | None:
    """Per node, its offline spans [leave, rejoin) up to the run's end (the deploy engine's view
    of the same churn); None when churn is off. A span not closed by the end runs to inf."""
    avail = availability_changes(setup)
    if avail is None:
        return None
    cfg = setup.cfg
    horizon = cfg.stop.virtual_time_s or cfg.deploy.timeout_s
    spans: list[list[tuple[float, float]]] = [[] for _ in range(cfg.nodes)]
    since: dict[int, float] = {}
    for change in avail:
        if change.time_s > horizon:
            break
        if not change.online and change.node not in since:
            since[change.node] = change.time_s
        elif change.online and change.node in since:
            spans[change.node].append((since.pop(change.node), change.time_s))
    for node, t in since.items():
        spans[node].append((t, float("inf")))
    return spans
