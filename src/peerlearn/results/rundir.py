"""Run directories: where results go, and the rule that nothing is overwritten unless asked."""

from __future__ import annotations

import shutil
from pathlib import Path


class RunDirError(Exception):
    pass


def prepare_run_dir(
    out: Path | None, name: str, *, overwrite: bool, base: Path = Path("runs")
) -> Path:
    """The directory to write into, created empty.

    An explicit ``out`` that exists is an error unless ``overwrite``; without ``out`` the run goes
    to ``runs/<name>``, or ``runs/<name>-2``, ``-3``, ... if that is taken.
    """
    if out is not None:
        occupied = (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir())
        if occupied:
            if not overwrite:
                raise RunDirError(
                    f"run directory {out} already exists; pass --overwrite to replace it"
                )
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        out.mkdir(parents=True, exist_ok=True)
        return out
    candidate = base / name
    k = 2
    while candidate.exists():
        candidate = base / f"{name}-{k}"
        k += 1
    candidate.mkdir(parents=True)
    return candidate
