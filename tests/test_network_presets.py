"""Network presets: capacities, latencies, straggler placement and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peerlearn.network.presets import PRESETS, NetworkSpec, build_network
from peerlearn.sim.network import flow_network


def test_every_preset_is_described_and_accepted_by_the_config():
    from peerlearn.config import load_config

    assert set(PRESETS) >= {"uniform", "stragglers", "ideal", "divshare_60n7cs5", "diablo_60n"}
    assert all(e.description for e in PRESETS.entries())
    for name in ("uniform", "stragglers", "ideal"):
        assert load_config(None, [f"network.preset={name}"]).network.preset == name


def test_uniform():
    spec = build_network("uniform", 4, mbps=100, latency_ms=2)
    assert isinstance(spec, NetworkSpec)
    assert np.all(spec.up_Bps == 12.5e6) and np.all(spec.down_Bps == 12.5e6)
    assert spec.latency_s.shape == (4, 4)
    assert np.all(np.diag(spec.latency_s) == 0)
    off = spec.latency_s[~np.eye(4, dtype=bool)]
    assert np.allclose(off, 2e-3)
    assert spec.description


def test_stragglers_default_ids_first():
    spec = build_network("stragglers", 10, fast_mbps=60, slowdown=5, stragglers=3)
    slow, fast = 60e6 / 8 / 5, 60e6 / 8
    assert spec.up_Bps == pytest.approx([slow] * 3 + [fast] * 7)
    assert np.array_equal(spec.up_Bps, spec.down_Bps)


def test_stragglers_explicit_ids():
    spec = build_network("stragglers", 6, fast_mbps=60, slowdown=4, straggler_ids=[5, 2])
    assert np.flatnonzero(spec.up_Bps < 60e6 / 8).tolist() == [2, 5]
    same = build_network("stragglers", 6, stragglers=2, straggler_ids=[2, 5])
    assert np.flatnonzero(same.up_Bps < 60e6 / 8).tolist() == [2, 5]


def test_no_stragglers_is_uniform_fast():
    spec = build_network("stragglers", 5, fast_mbps=8)
    assert np.all(spec.up_Bps == 1e6)


def test_ideal_delivers_instantly():
    spec = build_network("ideal", 3)
    assert np.all(np.isinf(spec.up_Bps)) and np.all(spec.latency_s == 0)
    fn = flow_network(spec)
    fn.enqueue(1, 0, 2, 10**9)
    assert fn.advance_to(0.0) == [(1, 0.0)]
    assert fn.latency(0, 2) == 0.0


def test_to_flow_network_uses_capacities_and_latency():
    spec = build_network("stragglers", 4, fast_mbps=80, slowdown=4, stragglers=1, latency_ms=1)
    fn = flow_network(spec)
    fn.enqueue(1, 0, 1, 2_500_000)  # straggler uplink: 20 Mbps = 2.5e6 B/s
    fn.enqueue(2, 2, 3, 10_000_000)  # fast pair: 80 Mbps = 1e7 B/s
    assert fn.rate(1) == pytest.approx(2.5e6)
    assert fn.rate(2) == pytest.approx(1e7)
    assert fn.advance_to(1.0) == [(1, pytest.approx(1.0)), (2, pytest.approx(1.0))]
    assert fn.latency(0, 1) == pytest.approx(1e-3)
    # Each call gives a fresh model.
    assert flow_network(spec).now == 0.0


@pytest.mark.parametrize(
    ("preset", "kwargs", "match"),
    [
        ("nope", {}, "unknown network preset"),
        ("uniform", {"mbps": 0}, "mbps"),
        ("uniform", {"mbps": math.inf}, "mbps"),
        ("uniform", {"latency_ms": -1}, "latency_ms"),
        ("stragglers", {"fast_mbps": -5}, "fast_mbps"),
        ("stragglers", {"slowdown": 0.5}, "slowdown"),
        ("stragglers", {"stragglers": 7}, "stragglers"),
        ("stragglers", {"straggler_ids": [0, 6]}, "straggler_ids"),
        ("stragglers", {"straggler_ids": [1, 1]}, "duplicates"),
        ("stragglers", {"stragglers": 3, "straggler_ids": [0, 1]}, "stragglers=3"),
    ],
)
def test_bad_parameters(preset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_network(preset, 6, **kwargs)


def test_bad_n():
    with pytest.raises(ValueError, match="n >= 1"):
        build_network("uniform", 0)
