"""The README's test command (`pytest -q`) must still print pytest's "N passed" summary line."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_does_not_add_a_second_quiet_flag() -> None:
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    # -q on the command line plus -q in addopts is -qq, which hides the summary line
    assert "-q" not in str(opts.get("addopts", "")).split()


def test_pytest_q_prints_the_summary_line(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b1 passed\b", proc.stdout), proc.stdout
