"""The command line end to end: quickstart (reduced), run directory contract, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peerlearn.cli import main

REDUCED = ["--set", "stop.virtual_time_s=6", "--set", "eval.every_s=2"]


def test_quickstart_end_to_end_via_console_script(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    exe = Path(sys.executable).with_name("peerlearn")
    cmd = [str(exe), "run", *REDUCED, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr
    assert {"config.toml", "metrics.csv", "summary.json", "plots"} <= {
        p.name for p in out.iterdir()
    }
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "algorithm",
        "nodes",
        "seed",
        "virtual_time_s",
        "wall_time_s",
        "final",
        "time_to_accuracy_s",
        "bytes",
    ):
        assert key in summary
    assert summary["algorithm"] == "dpsgd" and summary["nodes"] == 16
    assert summary["virtual_time_s"] == 6.0
    assert set(summary["bytes"]) >= {"sent", "delivered", "wasted", "data", "meta"}
    final = summary["final"]
    assert 0.0 <= final["test_acc_mean"] <= 1.0
    assert final["test_acc_mean"] > 0.5  # 10 classes: chance is 0.1
    assert {p.name for p in (out / "plots").iterdir()} >= {"acc_vs_time.png", "acc_vs_bytes.png"}
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "time_s,node,iteration,metric,value"


def test_run_directory_is_never_overwritten_unless_asked(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    args = [
        "run",
        *REDUCED,
        "--set",
        "nodes=6",
        "--set",
        "stop.virtual_time_s=1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    before = (out / "metrics.csv").read_bytes()
    (out / "notes.txt").write_text("mine")
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.csv").read_bytes() == before and (out / "notes.txt").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists()


def test_same_config_and_seed_give_identical_metrics(tmp_path: Path) -> None:
    args = [*REDUCED, "--set", "nodes=8", "--set", "stop.virtual_time_s=3", "--quiet"]
    assert main(["run", *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["run", *args, "--out", str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "metrics.csv").read_bytes()
    assert a == (tmp_path / "b" / "metrics.csv").read_bytes()
    assert main(["run", *args, "--set", "seed=2", "--out", str(tmp_path / "c")]) == 0
    assert a != (tmp_path / "c" / "metrics.csv").read_bytes()


def test_default_run_dir_gets_a_fresh_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["run", "--set", "nodes=6", "--set", "stop.virtual_time_s=0.5", "--quiet"]
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "runs" / "quickstart").is_dir()
    assert (tmp_path / "runs" / "quickstart-2").is_dir()


def test_list_and_inspect_data(capsys) -> None:
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ("dpsgd", "digits", "cifar10", "gn_lenet", "kshard", "small_world", "stragglers"):
        assert name in text
    assert main(["inspect-data", "--set", "nodes=4"]) == 0
    assert "node" in capsys.readouterr().out.lower()
