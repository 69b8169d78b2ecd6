"""Topologies: shapes, connectivity, seeding, edge-list files and mixing weights."""

from __future__ import annotations

import networkx as nx
import pytest

from peerlearn.network.topology import (
    TOPOLOGIES,
    build_topology,
    metropolis_hastings_weights,
)


def degrees(g: nx.Graph) -> set[int]:
    return {d for _, d in g.degree()}


def test_every_kind_is_described():
    assert set(TOPOLOGIES) == {"ring", "regular", "full", "small_world", "file"}


def test_ring_and_full():
    ring = build_topology("ring", 10)
    assert list(ring.nodes) == list(range(10))
    assert degrees(ring) == {2} and nx.is_connected(ring)
    full = build_topology("full", 7)
    assert full.number_of_edges() == 21


@pytest.mark.parametrize(("n", "d"), [(10, 3), (60, 4), (60, 6), (16, 2), (2, 1), (5, 4)])
def test_regular_degree_connected_reproducible(n, d):
    g = build_topology("regular", n, degree=d, seed=7)
    assert list(g.nodes) == list(range(n))
    assert degrees(g) == {d}
    assert nx.is_connected(g)
    assert sorted(g.edges) == sorted(build_topology("regular", n, degree=d, seed=7).edges)


def test_regular_seed_changes_graph():
    a = build_topology("regular", 30, degree=4, seed=1)
    b = build_topology("regular", 30, degree=4, seed=2)
    assert sorted(a.edges) != sorted(b.edges)


@pytest.mark.parametrize(
    ("n", "d", "match"),
    [(9, 3, "even"), (5, 5, "degree"), (6, 1, "disconnected"), (5, 0, "degree")],
)
def test_regular_errors(n, d, match):
    with pytest.raises(ValueError, match=match):
        build_topology("regular", n, degree=d)


def test_small_world():
    g = build_topology("small_world", 40, degree=4, rewire_p=0.3, seed=3)
    assert nx.is_connected(g) and g.number_of_nodes() == 40
    assert g.number_of_edges() == 40 * 4 // 2  # rewiring keeps the edge count
    again = build_topology("small_world", 40, degree=4, rewire_p=0.3, seed=3)
    assert sorted(g.edges) == sorted(again.edges)
    assert degrees(build_topology("small_world", 12, degree=4, rewire_p=0.0)) == {4}
    with pytest.raises(ValueError, match="even"):
        build_topology("small_world", 12, degree=3)
    with pytest.raises(ValueError, match="rewire_p"):
        build_topology("small_world", 12, degree=4, rewire_p=1.5)


def test_general_errors():
    with pytest.raises(ValueError, match="unknown topology"):
        build_topology("star", 5)
    with pytest.raises(ValueError, match="n >= 2"):
        build_topology("ring", 1)
    with pytest.raises(ValueError, match="path"):
        build_topology("file", 5)
    with pytest.raises(ValueError, match="path"):
        build_topology("ring", 5, path="x.txt")


def test_file_plain_with_comments(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("# a ring\n0 1\n\n1 2  # trailing comment\n2 3\n3 0\n1 0\n")
    g = build_topology("file", 4, path=str(p))
    assert sorted(g.edges) == [(0, 1), (0, 3), (1, 2), (2, 3)]


def test_file_decentralizepy_format(tmp_path):
    p = tmp_path / "g.edges"
    p.write_text("3\n0 1\n1 0\n1 2\n2 1\n")
    g = build_topology("file", 3, path=str(p))
    assert sorted(g.edges) == [(0, 1), (1, 2)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0 1\n1 x\n", r"g\.txt:2: expected integer"),
        ("0 1\n1 2 3\n", r"g\.txt:2: expected 'u v'"),
        ("0 1\n1 4\n", r"g\.txt:2: node id out of range"),
        ("0 1\n2 2\n", r"g\.txt:2: self-loop"),
        ("5\n0 1\n", r"g\.txt:1: file declares 5 nodes"),
        ("0 1\n2 3\n", r"g\.txt: topology is not connected"),
        ("0 1\n1 2\n", r"not connected"),  # node 3 missing
    ],
)
def test_file_errors_name_file_and_line(tmp_path, text, match):
    p = tmp_path / "g.txt"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        build_topology("file", 4, path=str(p))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        build_topology("file", 4, path=str(tmp_path / "nope.txt"))


@pytest.mark.parametrize(
    "graph",
    [
        build_topology("ring", 8),
        build_topology("regular", 20, degree=3, seed=4),
        build_topology("small_world", 20, degree=4, seed=4),
        nx.star_graph(5),
    ],
)
def test_metropolis_hastings_weights(graph):
    w = metropolis_hastings_weights(graph)
    for i, row in w.items():
        assert sum(row.values()) == pytest.approx(1.0)
        assert all(v >= 0 for v in row.values())
        assert set(row) == set(graph.neighbors(i)) | {i}
        for j, v in row.items():
            assert w[j][i] == v


def test_metropolis_hastings_ring_values():
    w = metropolis_hastings_weights(build_topology("ring", 5))
    assert w[0] == pytest.approx({1: 1 / 3, 4: 1 / 3, 0: 1 / 3})
