"""Kollaps XML import, the DivShare artifact presets, and their agreement."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from peerlearn.network.kollaps import import_kollaps, network_signature
from peerlearn.network.presets import (
    DIABLO_REGIONS,
    DIABLO_REPLICAS,
    DIVSHARE_STRAGGLER_MBPS,
    NetworkSpec,
    build_network,
    diablo_mbps,
    mbps_to_Bps,
)
from peerlearn.sim.network import flow_network

SHARED = os.environ.get("PEERLEARN_TEST_SHARED_DATA")


def _same(a: NetworkSpec, b: NetworkSpec) -> bool:
    la, ra = network_signature(a)
    lb, rb = network_signature(b)
    return bool(np.allclose(la, lb, rtol=0, atol=1e-12)) and ra == rb


def _xml(services: str, links: str, bridges: str = "") -> str:
    return (
        '<?xml version="1.0" ?>\n<experiment boot="kollaps:2.0">\n'
        f"<services>{services}</services>\n"
        + (f"<bridges>{bridges}</bridges>\n" if bridges else "")
        + f"<links>{links}</links>\n</experiment>\n"
    )


def _link(a: str, b: str, mbps: float, lat: float = 1, down: bool = True) -> str:
    d = f' download="{mbps:g}Mbps"' if down else ""
    return (
        f'<link origin="{a}" dest="{b}" latency="{lat:g}" upload="{mbps:g}Mbps"{d} drop="0" '
        'network="kollaps_network"/>'
    )


def _service(name: str, replicas: int = 1, extra: str = "") -> str:
    return f'<service name="{name}" image="kollaps/dp:1.0" replicas="{replicas}"{extra}/>'


def _write(tmp_path: Path, text: str, name: str = "topo.xml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def straggler_star_xml() -> str:
    """The structure of the artifact's example_topology_60n7cs5.xml, from the preset's numbers."""
    services = '<service name="dashboard" image="kollaps/dashboard:1.0" supervisor="true"/>'
    services += _service("fastWorker", 53)
    services += "".join(_service(f"slowWorker{k}") for k in range(7))
    links = _link("fastWorker", "switch", 60)
    links += "".join(
        _link(f"slowWorker{k}", "switch", m) for k, m in enumerate(DIVSHARE_STRAGGLER_MBPS)
    )
    return _xml(services, links, '<bridge name="switch"/>')


def diablo_xml() -> str:
    """The structure of the artifact's example_topology_60n_diablo.xml."""
    table = diablo_mbps()
    services = '<service name="dashboard" image="kollaps/dashboard:1.0" supervisor="true"/>'
    services += "".join(_service(r, DIABLO_REPLICAS) for r in DIABLO_REGIONS)
    links = "".join(
        _link(DIABLO_REGIONS[a], DIABLO_REGIONS[b], table[a, b])
        for a in range(len(DIABLO_REGIONS))
        for b in range(a + 1, len(DIABLO_REGIONS))
    )
    return _xml(services, links)


# -- the artifact's topologies ----------------------------------------------------------------


def test_straggler_star_import_equals_the_preset(tmp_path: Path) -> None:
    spec = import_kollaps(_write(tmp_path, straggler_star_xml()))
    preset = build_network("divshare_60n7cs5", 60)
    assert _same(spec, preset)
    # stragglers are ids 0..6 (slow workers first, as the artifact's launcher lists them)
    np.testing.assert_allclose(spec.up_Bps[:8] * 8 / 1e6, [12, 12, 12, 13, 10, 13, 11, 60])
    np.testing.assert_array_equal(spec.up_Bps, spec.down_Bps)
    assert spec.links == [] and spec.latency_s[0, 1] == pytest.approx(0.002)  # two 1 ms links
    via_preset = build_network("kollaps", 60, kollaps_xml=_write(tmp_path, straggler_star_xml()))
    assert _same(via_preset, preset)


@pytest.mark.parametrize("intra", [None, 200.0])
def test_diablo_import_equals_the_preset(tmp_path: Path, intra: float | None) -> None:
    path = _write(tmp_path, diablo_xml())
    spec = build_network("kollaps", 60, kollaps_xml=path, intra_region_mbps=intra)
    preset = build_network("diablo_60n", 60, intra_region_mbps=intra)
    assert _same(spec, preset)


def test_diablo_pairs_and_the_kollaps_relay_inside_a_region() -> None:
    spec = build_network("diablo_60n", 60)
    assert np.isinf(spec.up_Bps).all() and np.isinf(spec.down_Bps).all()
    (k,) = spec.route(0, 6)  # capetown -> tokyo: its own link, 26 Mbps, 1 ms
    assert spec.links[k] == mbps_to_Bps(26) and spec.latency_s[0, 6] == pytest.approx(1e-3)
    assert spec.route(0, 6) != spec.route(0, 7) != spec.route(1, 6)  # one link per pair
    # capetown 0 -> capetown 1 goes through tokyo's first replica (node 6), 2 ms
    assert spec.route(0, 1) == (*spec.route(0, 6), *spec.route(6, 1))
    assert spec.latency_s[0, 1] == pytest.approx(2e-3)
    # every other region relays through capetown's first replica (node 0)
    assert spec.route(12, 13) == (*spec.route(12, 0), *spec.route(0, 13))
    private = build_network("diablo_60n", 60, intra_region_mbps=1000)
    (k,) = private.route(0, 1)
    assert private.links[k] == mbps_to_Bps(1000) and private.latency_s[0, 1] == pytest.approx(1e-3)


@pytest.mark.skipif(
    not SHARED, reason="set PEERLEARN_TEST_SHARED_DATA to a folder like /work/shared/data"
)
@pytest.mark.parametrize(
    ("name", "preset"),
    [("divshare_60n7cs5.xml", "divshare_60n7cs5"), ("diablo_60n.xml", "diablo_60n")],
)
def test_the_artifact_files_equal_their_presets(name: str, preset: str) -> None:
    path = Path(SHARED or "") / "topologies" / name
    assert _same(build_network("kollaps", 60, kollaps_xml=str(path)), build_network(preset, 60))


def test_artifact_presets_need_60_nodes() -> None:
    for preset in ("divshare_60n7cs5", "diablo_60n"):
        with pytest.raises(ValueError, match="60-node"):
            build_network(preset, 12)


# -- Kollaps semantics on small topologies ------------------------------------------------------


def test_paths_are_bounded_by_every_link_and_share_them(tmp_path: Path) -> None:
    # a -- b1 == core == b2 -- c (x2): the core link is shared by every flow crossing it
    services = _service("a") + _service("c", 2)
    bridges = '<bridge name="b1"/><bridge name="b2"/>'
    links = _link("a", "b1", 100, lat=2) + _link("b1", "b2", 10, lat=5) + _link("c", "b2", 50)
    spec = import_kollaps(_write(tmp_path, _xml(services, links, bridges)))
    assert spec.n == 3
    assert spec.latency_s[0, 1] == pytest.approx(0.008) and spec.latency_s[1, 2] == pytest.approx(
        0.002
    )
    net = flow_network(spec)
    net.enqueue(0, 0, 1, 10**6)  # a -> c#0 crosses the 10 Mbps core
    net.enqueue(1, 0, 2, 10**6)  # a -> c#1 too: they share it
    net.enqueue(2, 1, 2, 10**6)  # c#0 -> c#1 stays behind b2: 50 Mbps, but shares c#1's link
    assert net.rate(0) == pytest.approx(mbps_to_Bps(5))
    assert net.rate(1) == pytest.approx(mbps_to_Bps(5))
    assert net.rate(2) == pytest.approx(mbps_to_Bps(45))


def test_shared_service_replicas_share_one_link(tmp_path: Path) -> None:
    services = _service("s", 3, ' share="true"') + _service("t")
    spec = import_kollaps(_write(tmp_path, _xml(services, _link("s", "t", 30))))
    net = flow_network(spec)
    net.enqueue(0, 0, 3, 10**6)
    net.enqueue(1, 1, 3, 10**6)
    assert net.rate(0) == net.rate(1) == pytest.approx(mbps_to_Bps(15))


def test_a_one_way_link_leaves_pairs_unreachable(tmp_path: Path) -> None:
    text = _xml(_service("a") + _service("b"), _link("a", "b", 10, down=False))
    with pytest.raises(ValueError, match=r"topo\.xml.*no path from b#0 to a#0"):
        import_kollaps(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<experiment><services>", "not well-formed"),
        ("<topology/>", "root element must be <experiment>"),
        (_xml(_service("a", 2), ""), "needs at least 2|no path"),
        (_xml(_service("a") + _service("b"), _link("a", "x", 10)), "'x' is no declared"),
        (
            _xml(_service("a") + _service("b"), _link("a", "b", 10).replace("10Mbps", "fast")),
            "bandwidth 'fast'",
        ),
        (
            _xml(
                _service("a") + _service("b"), _link("a", "b", 10).replace('drop="0"', 'drop="0.1"')
            ),
            "packet loss",
        ),
        (
            _xml(_service("a") + _service("b"), _link("a", "b", 10).replace('latency="1"', "")),
            "latency is missing",
        ),
        (_xml(_service("a") + _service("a"), ""), "declared twice"),
        (_xml(_service("a", 0), ""), "replicas must be >= 1"),
        ("<experiment><services/><links/><dynamic/></experiment>", "dynamic"),
        ("<experiment><links/></experiment>", "no <services>"),
    ],
)
def test_bad_topologies_name_the_file_and_the_problem(
    tmp_path: Path, text: str, match: str
) -> None:
    path = _write(tmp_path, text, "bad.xml")
    with pytest.raises(ValueError, match=rf"bad\.xml.*({match})"):
        import_kollaps(path)


def test_missing_file_and_build_network_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.xml.*cannot read"):
        import_kollaps(tmp_path / "nope.xml")
    path = _write(tmp_path, straggler_star_xml())
    with pytest.raises(ValueError, match="defines 60 nodes but the run has n=10"):
        build_network("kollaps", 10, kollaps_xml=path)
    with pytest.raises(ValueError, match="needs kollaps_xml"):
        build_network("kollaps", 10)
    with pytest.raises(ValueError, match="only used by preset 'kollaps'"):
        build_network("uniform", 10, kollaps_xml=path)
    with pytest.raises(ValueError, match="intra_region_mbps only applies"):
        build_network("stragglers", 10, intra_region_mbps=5.0)
