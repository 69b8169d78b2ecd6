"""A CI-sized run of benchmarks/jwins96.py (both modes) on a tiny config (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "jwins96.py"

CONFIG = """
nodes = 6
[data]
dataset = "synthetic"
partition = "iid"
[model]
hidden = [16]
[train]
local_steps = 2
[topology]
kind = "regular"
degree = 2
[algorithm]
name = "jwins"
[stop]
iterations = 8
[eval]
every_iterations = 4
nodes = 3
test_samples = 50
"""


def _run(tmp_path: Path, *args: str) -> dict:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(BENCH), args[0], str(cfg), *args[1:], "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_cost_mode(tmp_path: Path) -> None:
    out = _run(tmp_path, "cost", "--rounds", "2", "--eval-every", "1", "--algorithm", "dpsgd")
    assert out["no_eval"]["per_round_s"] > 0 and out["eval"]["evaluations"] == 3
    assert out["estimate"]["full_run_rounds"] == 8 and out["estimate"]["full_run_evals"] == 3


def test_error_mode(tmp_path: Path) -> None:
    out = _run(tmp_path, "error", "--rounds", "4", "--every", "2")
    points = out["points"]
    assert [p["round"] for p in points] == [0, 2, 4]
    # at round 0 every node holds the same model: only the test subset makes an error
    assert points[0]["node_acc_std"] == 0.0
    for p in points:
        assert abs(p["config_acc_error"] - (p["config_acc"] - p["full_acc"])) < 1e-12
        assert 0.0 <= p["full_acc"] <= 1.0
