"""``compare-runs``: finished run directories (simulated or deployed) side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peerlearn.compare import compare_run_dirs
from peerlearn.config import ConfigError
from peerlearn.runner import run_experiment
from tests.conftest import small


def test_compare_a_simulated_and_a_deployed_run(tmp_path: Path) -> None:
    cfg = small("eval.log_messages=true")
    sim = run_experiment(cfg, tmp_path / "twin", quiet=True, plots=False).run_dir
    # a deployed run directory has the same files; only the engine differs
    real = tmp_path / "deployed" / "twin"
    shutil.copytree(sim, real)
    summary = json.loads((real / "summary.json").read_text())
    summary["engine"] = "deploy"
    (real / "summary.json").write_text(json.dumps(summary))
    out = compare_run_dirs([sim, real], tmp_path / "cmp", quiet=True)
    assert set(out["runs"]) == {"twin@sim", "twin@deploy"}
    assert out["baseline"] == "twin@sim"
    assert (tmp_path / "cmp" / "comparison.json").exists()
    assert (tmp_path / "cmp" / "plots" / "acc_vs_time.png").exists()
    # both have messages.csv: the comparison reports their transfer times
    for label in ("twin@sim", "twin@deploy"):
        t = out["runs"][label]["transfer_s"]
        assert t["messages"] == summary["messages"]["delivered"] > 0
        assert 0 < t["p10"] <= t["median"] <= t["p90"]
    with pytest.raises(ConfigError, match="labelled"):
        compare_run_dirs([sim, sim], tmp_path / "cmp2", quiet=True)
