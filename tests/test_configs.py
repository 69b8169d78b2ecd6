"""Every shipped experiment config and sweep file validates (data is not loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerlearn.config import load_config
from peerlearn.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent / "configs"
SWEEPS = sorted((ROOT / "sweeps").glob("*.toml"))
CONFIGS = sorted(p for p in ROOT.rglob("*.toml") if p.parent != ROOT / "sweeps")


def test_there_are_configs() -> None:
    assert CONFIGS and SWEEPS


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.nodes >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_file_validates(path: Path) -> None:
    """Every run of the sweep is a valid config (load_sweep validates each before any runs)."""
    spec = load_sweep(path)
    assert spec.runs and len({r.config_hash for r in spec.runs}) == len(spec.runs)
