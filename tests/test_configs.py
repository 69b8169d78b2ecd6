"""Every shipped experiment config validates (data is not loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerlearn.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


def test_there_are_configs() -> None:
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.nodes >= 2
