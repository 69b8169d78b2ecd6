"""``peerlearn compare``: variant parsing, shared settings, side-by-side outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerlearn.cli import main
from peerlearn.compare import parse_algorithms, variant_config
from peerlearn.config import ConfigError


def test_parse_algorithms_with_parameters() -> None:
    got = parse_algorithms("divshare[fragments=2; fanout=3],swift,adpsgd")
    assert got[0] == ("divshare-fragments2-fanout3", "divshare", ["fragments=2", "fanout=3"])
    assert [g[0] for g in got[1:]] == ["swift", "adpsgd"]
    # commas inside brackets separate parameters, not variants
    got = parse_algorithms("choco[fraction=0.05,gamma=0.5],dpsgd")
    assert got[0] == ("choco-fraction0p05-gamma0p5", "choco", ["fraction=0.05", "gamma=0.5"])
    assert got[1][0] == "dpsgd"
    # a dotted key is a per-variant setting of the whole config, labelled by its last part
    got = parse_algorithms("swift[train.lr=0.1],adpsgd[fanout=2,train.lr=0.2]")
    assert [g[0] for g in got] == ["swift-lr0p1", "adpsgd-fanout2-lr0p2"]
    with pytest.raises(ConfigError):
        parse_algorithms("swift,swift")
    with pytest.raises(ConfigError):
        parse_algorithms("Swift!")


def test_variant_keeps_only_keys_the_algorithm_accepts() -> None:
    raw = {"algorithm": {"name": "divshare", "fragments": 4, "fanout": 3}}
    swift = variant_config(raw, "swift", [])
    assert swift.algorithm.name == "swift" and swift.algorithm.fanout == 3
    div = variant_config(raw, "divshare", ["fragments=2"])
    assert div.algorithm.fragments == 2 and div.algorithm.fanout == 3
    with pytest.raises(ConfigError, match="unknown algorithm"):
        variant_config(raw, "nope", [])
    tuned = variant_config({**raw, "train": {"lr": 0.05}}, "swift", ["train.lr=0.1", "fanout=2"])
    assert tuned.train.lr == 0.1 and tuned.algorithm.fanout == 2
    with pytest.raises(ConfigError, match="nope"):
        variant_config(raw, "swift", ["train.nope=1"])


def test_compare_runs_each_variant_and_writes_ratios(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--algorithms",
        "topk[fraction=0.5],dpsgd",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "nodes=6",
        "--set",
        "network.stragglers=0",
        "--set",
        "stop.virtual_time_s=2",
    ]
    assert main(args) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["baseline"] == "dpsgd"
    assert set(comparison["runs"]) == {"topk-fraction0p5", "dpsgd"}
    for label in comparison["runs"]:
        assert (out / label / "summary.json").exists()
    assert (out / "plots" / "acc_vs_time.png").exists()
    topk, dpsgd = comparison["runs"]["topk-fraction0p5"], comparison["runs"]["dpsgd"]
    # half the coordinates (plus indices) per message: fewer bytes per round than full sharing
    per_round = [r["bytes"]["sent"] / r["iterations"]["mean"] for r in (topk, dpsgd)]
    assert per_round[0] < per_round[1]
    assert main(args) == 2  # never overwritten unless asked
