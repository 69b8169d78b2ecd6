"""The example plugin installed as a package (pip, its own pyproject.toml), found through its
entry point with no ``plugins`` key, and run under the simulator and ``peerlearn deploy``.

Each step runs in a child process, so the registrations of the installed plugin never mix with
the in-process registries the other tests use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_deploy_node import free_port_base

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """pip-installs the example into a fresh folder; the environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    # built from a copy: setuptools leaves build/ and an egg-info beside the sources, and an
    # egg-info in examples/plugin would make test_plugins.py find the entry point there
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    # without build isolation pip needs no download: the venv's setuptools builds it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation]
    done = subprocess.run(
        [*cmd, "--target", str(target), str(source)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert list(target.glob("peerlearn_example_plugin-*.dist-info/entry_points.txt"))
    path = os.pathsep.join([str(target), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def _config_without_plugins_key(tmp_path: Path) -> Path:
    text = (EXAMPLE / "config.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("plugins")]
    assert len(lines) == len(text.splitlines()) - 1
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _peerlearn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peerlearn.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_list_names_the_installed_distribution(installed) -> None:
    done = _peerlearn(installed, "list")
    assert done.returncode == 0, done.stderr
    rows = [ln for ln in done.stdout.splitlines() if "uniform_avg" in ln or "tanh_mlp" in ln]
    assert len(rows) == 2 and all("entry point example" in ln for ln in rows), rows


def test_installed_plugin_runs_in_the_simulator(installed, tmp_path: Path) -> None:
    config = _config_without_plugins_key(tmp_path)
    out = tmp_path / "sim"
    done = _peerlearn(
        installed, "run", str(config), "--quiet", "--set", "nodes=4", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "uniform_avg" and summary["engine"] == "sim"
    assert summary["final"]["test_acc_mean"] > 0.8  # digits, 20 virtual seconds: it learns
    assert "plugins" not in (out / "config.toml").read_text()


def test_installed_plugin_runs_under_deploy(installed, tmp_path: Path) -> None:
    config = _config_without_plugins_key(tmp_path)
    out = tmp_path / "deploy"
    sets = ["nodes=3", "stop.virtual_time_s=3", "eval.every_s=1"]
    sets.append(f"deploy.base_port={free_port_base(3)}")
    args = [a for s in sets for a in ("--set", s)]
    done = _peerlearn(installed, "deploy", str(config), "--quiet", *args, "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "uniform_avg" and summary["engine"] == "deploy"
    assert summary["deploy"]["nodes_failed"] == []
    assert summary["iterations"]["min"] >= 3
