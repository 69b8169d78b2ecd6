"""docs/reproduction.md's generated tables are what the committed evidence gives, and the
verdict rule does what the document says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "repro" / "make_tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("make_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_tables_match_the_committed_evidence(tables) -> None:
    assert tables.main(["--check"]) == 0


def test_a_changed_number_is_caught(tables, tmp_path: Path, monkeypatch) -> None:
    doc = tmp_path / "reproduction.md"
    text = tables.DOC.read_text()
    doc.write_text(text.replace(" runs finished (", " runs finished (1", 1))
    monkeypatch.setattr(tables, "DOC", doc)
    assert tables.main(["--check"]) == 1
    assert tables.main([]) == 0 and doc.read_text() == text


def test_verdict_rule(tables) -> None:
    claim = tables.Claim("P", "claim", 2.0, "setting", "x", "a", "b")

    def r(lo, ratio, hi, pairs=3):
        return {"pairs": pairs, "ratio": ratio, "lo": lo, "hi": hi}

    assert tables.verdict(claim, None) == "untested"
    assert tables.verdict(claim, r(None, 1.5, None, pairs=1)) == "pending (1 seed)"
    assert tables.verdict(claim, r(1.0, 1.5, 2.0, pairs=2)) == "pending (2 seeds)"
    assert tables.verdict(claim, r(0.5, 0.7, 0.9)) == "reversed"
    assert tables.verdict(claim, r(0.9, 1.2, 1.6)) == "not reproduced"
    assert tables.verdict(claim, r(1.1, 1.4, 1.8)) == "partly"
    assert tables.verdict(claim, r(1.5, 1.9, 2.4)) == "reproduced"


def test_dynamics_table_matches_its_evidence() -> None:
    path = SCRIPT.parents[1] / "dynamics_table.py"
    spec = importlib.util.spec_from_file_location("dynamics_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
