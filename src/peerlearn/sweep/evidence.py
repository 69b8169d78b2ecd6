"""``peerlearn evidence``: a compact copy of a sweep directory that can be committed and re-checked.

A full sweep directory keeps every node's metric at every evaluation (tens of MB per run at 60
nodes). The evidence copy keeps, for each finished run, its ``config.toml``, its ``summary.json``
and the rows of ``metrics.csv`` aggregated over nodes (node -1: mean, std, min and max of each
metric), byte for byte; plus ``sweep.toml`` and ``sweep.json``. Everything the statistics, the
tidy table and the report read is there, so ``stats.json`` and ``sweep.csv`` are recomputed from
the copied rows (never copied), and ``peerlearn report`` works on the copy as on the original.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from peerlearn.results.metrics import ALL_NODES, COLUMNS
from peerlearn.results.rundir import RunDirError
from peerlearn.results.summary import dumps
from peerlearn.sweep.driver import aggregate, is_finished
from peerlearn.sweep.spec import RunSpec, SweepSpec

RUN_FILES = ("config.toml", "summary.json")


@dataclass
class Export:
    dest: Path
    copied: list[str] = field(default_factory=list)  # run directories copied
    left_out: list[str] = field(default_factory=list)  # not finished in the source
    stats: dict[str, Any] = field(default_factory=dict)


def read_index(sweep_dir: Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep directory, or a one-line error saying what is missing."""
    path = sweep_dir / "sweep.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{sweep_dir} is not a sweep directory (no sweep.json)") from None
    except ValueError as e:
        raise RunDirError(f"{path}: not valid JSON ({e})") from None


def spec_from_index(sweep_dir: Path) -> SweepSpec:
    """The parts of a sweep's spec that aggregation needs, from its ``sweep.json``."""
    index = read_index(sweep_dir)
    try:
        runs = [
            RunSpec(
                label=r["label"],
                variant=r["variant"],
                seed=int(r["seed"]),
                params=r["params"],
                config_toml="",
                config_hash=r["config_hash"],
                group=r["group"],
            )
            for r in index["runs"]
        ]
        return SweepSpec(
            name=index["name"],
            out=sweep_dir,
            runs=runs,
            variants=index["variants"],
            baseline=index["baseline"],
            swept_keys=index["swept_keys"],
            allow_unequal_grids=bool(index.get("allow_unequal_grids", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{sweep_dir / 'sweep.json'}: malformed ({e!r})") from None


def aggregate_dir(sweep_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Recompute ``stats.json`` and ``sweep.csv`` of a sweep (or evidence) directory."""
    return aggregate(spec_from_index(sweep_dir), sweep_dir, console)


def aggregate_rows(metrics_csv: Path) -> str:
    """The header and the node -1 lines of a ``metrics.csv``, unchanged."""
    node_col = COLUMNS.index("node")
    kept = []
    with metrics_csv.open(newline="") as f:
        header = f.readline()
        if header.rstrip("\r\n").split(",") != list(COLUMNS):
            raise RunDirError(f"{metrics_csv}: header is not {','.join(COLUMNS)}")
        for line in f:
            # no field before 'metric' is quoted, so splitting the first columns is exact
            if line.split(",", node_col + 1)[node_col] == str(ALL_NODES):
                kept.append(line)
    return header + "".join(kept)


def export_evidence(
    sweep_dir: Path, dest: Path, *, overwrite: bool = False, console: Console | None = None
) -> Export:
    """Write the evidence copy of ``sweep_dir`` to ``dest`` and recompute its statistics there.

    ``dest`` must not exist or be empty; with ``overwrite`` an earlier evidence copy (a directory
    with a ``sweep.json``) is replaced, anything else is refused.
    """
    index = read_index(sweep_dir)
    if dest.resolve() == sweep_dir.resolve():
        raise RunDirError(f"evidence destination {dest} is the sweep directory itself")
    if dest.exists():
        if not dest.is_dir():
            raise RunDirError(f"evidence destination {dest} is a file")
        if any(dest.iterdir()):
            if not overwrite:
                raise RunDirError(f"{dest} exists and is not empty (--overwrite replaces it)")
            if not (dest / "sweep.json").is_file():
                raise RunDirError(f"{dest} is not an evidence directory; not replacing it")
            shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    result = Export(dest)
    runs = []
    for r in index["runs"]:
        src_run = sweep_dir / r["dir"]
        if not is_finished(src_run, r["config_hash"]):
            result.left_out.append(r["dir"])
            runs.append({**r, "status": "not exported"})
            continue
        out_run = dest / r["dir"]
        out_run.mkdir(parents=True)
        for name in RUN_FILES:
            shutil.copyfile(src_run / name, out_run / name)
        (out_run / "metrics.csv").write_text(aggregate_rows(src_run / "metrics.csv"))
        result.copied.append(r["dir"])
        runs.append({**r, "status": "finished"})
    if (sweep_dir / "sweep.toml").is_file():
        shutil.copyfile(sweep_dir / "sweep.toml", dest / "sweep.toml")
    (dest / "sweep.json").write_text(dumps({**index, "runs": runs}))
    if result.copied:
        result.stats = aggregate_dir(dest, console)
    return result
