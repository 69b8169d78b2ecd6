"""``peerlearn sweep``: run every run of a sweep that is not finished yet, then aggregate.

Layout of the sweep directory::

    OUT/sweep.toml            the sweep file as given
    OUT/runs/<label>-<hash>/  one run: config.toml, metrics.csv, [messages.csv,] summary.json
    OUT/sweep.json            every run: label, group, variant, seed, swept values, status
    OUT/stats.json            per group: mean and CI over seeds; ratios against the baseline
    OUT/sweep.csv             tidy table: run x evaluation time x metric, swept keys as columns

A run directory is finished when its summary.json (written last, atomically) names the same
config hash as the directory and its config.toml. Anything else under a run's name is removed and
the run done again; finished runs are skipped.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from peerlearn.config.load import ConfigError
from peerlearn.results.atomic import write_atomic
from peerlearn.results.messages import write_messages_csv
from peerlearn.results.metrics import MetricsRecorder, read_metrics_csv
from peerlearn.results.rundir import RunDirError, check_replaceable
from peerlearn.results.stats import (
    RunCurves,
    check_grids,
    compare_groups,
    fmt_ci,
    fmt_ratio,
    fmt_target,
    group_stats,
    run_curves,
)
from peerlearn.results.summary import dumps
from peerlearn.sweep.spec import RunSpec, SweepSpec, config_hash, run_order


@dataclass
class SweepOutcome:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # dirname -> error
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def is_finished(run_dir: Path, expected_hash: str) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        cfg_text = (run_dir / "config.toml").read_text()
    except (OSError, ValueError):
        return False
    if (summary.get("sweep") or {}).get("config_hash") != expected_hash:
        return False
    if not (run_dir / "metrics.csv").exists():
        return False
    try:
        return config_hash(tomllib.loads(cfg_text)) == expected_hash
    except tomllib.TOMLDecodeError:
        return False


def write_run(run_dir: Path, run: RunSpec, result: dict[str, Any]) -> None:
    """The run directory, summary.json last and atomically (its presence marks it finished)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(run.config_toml)
    MetricsRecorder(list(result["rows"])).write_csv(run_dir / "metrics.csv")
    if result.get("messages") is not None:
        write_messages_csv(run_dir / "messages.csv", result["messages"])
    summary = dict(result["summary"])
    summary["sweep"] = {
        "config_hash": run.config_hash,
        "label": run.label,
        "group": run.group,
        "variant": run.variant,
        "params": run.params,
        "host": result.get("host"),
        "worker_wall_s": result.get("worker_wall_s"),
    }
    write_atomic(run_dir / "summary.json", dumps(summary))


def _prepare_out(spec: SweepSpec, overwrite: bool) -> Path:
    out = spec.out
    if out.exists() and not out.is_dir():
        raise RunDirError(f"sweep directory {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "sweep.toml").exists():
        if not overwrite:
            raise RunDirError(
                f"{out} exists and is not a sweep directory; pass --overwrite to replace it"
            )
        check_replaceable(out, overwrite)  # only a peerlearn run, never . or a parent
        shutil.rmtree(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "sweep.toml").write_text(spec.source)
    return out


def run_sweep(
    spec: SweepSpec,
    *,
    jobs: int | None = None,
    ray: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> SweepOutcome:
    t0 = time.perf_counter()
    console = console or Console(stderr=True, quiet=quiet)
    out = _prepare_out(spec, overwrite)
    outcome = SweepOutcome(out)
    by_dir = {r.dirname: r for r in spec.runs}
    todo: list[RunSpec] = []
    for run in spec.runs:
        d = out / "runs" / run.dirname
        if is_finished(d, run.config_hash):
            outcome.skipped.append(run.dirname)
            continue
        if d.exists():
            shutil.rmtree(d)  # incomplete: started and interrupted, or failed
        todo.append(run)
    todo = run_order(spec, todo)
    _write_index(out, spec, {})
    if ray is not None:
        from peerlearn.sweep.executors import RayExecutor

        executor: Any = RayExecutor(ray, spec.resources, spec.threads)
    else:
        from peerlearn.sweep.executors import LocalExecutor

        executor = LocalExecutor(jobs or spec.jobs or 1, spec.threads)
    console.print(
        f"[bold]{spec.name}[/bold]: {len(spec.runs)} runs, {len(outcome.skipped)} already "
        f"finished, {len(todo)} to run on {executor.where}"
    )
    try:
        _execute(executor, todo, out, outcome, console, quiet, len(spec.runs))
    finally:
        if hasattr(executor, "close"):
            executor.close()
    _write_index(out, spec, outcome.failed)
    for name in outcome.failed:
        console.print(f"[red]failed:[/red] {name}: {outcome.failed[name].strip().splitlines()[-1]}")
    outcome.stats = aggregate(spec, out, console=None if quiet else Console())
    outcome.wall_s = time.perf_counter() - t0
    del by_dir
    return outcome


def _execute(executor, todo, out, outcome, console, quiet, total) -> None:
    runs = {r.dirname: r for r in todo}
    walls: list[float] = []
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]runs"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} done"),
        TextColumn("{task.fields[running]} running, {task.fields[left]} left"),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task(
            "runs",
            total=total,
            completed=len(outcome.skipped),
            running=0,
            left=len(todo),
            failed="",
            eta="?",
        )
        left = len(todo)
        for key, result in executor.map([(r.dirname, r.config_toml) for r in todo]):
            run = runs[key]
            d = out / "runs" / key
            left -= 1
            if result.get("ok"):
                write_run(d, run, result)
                outcome.ran.append(key)
            else:
                outcome.failed[key] = result.get("error", "unknown error")
                d.mkdir(parents=True, exist_ok=True)  # no summary.json: redone next time
                (d / "error.txt").write_text(outcome.failed[key])
            walls.append(time.perf_counter() - started)
            # ETA: this session's throughput so far, applied to what is left
            rate = len(walls) / max(walls[-1], 1e-9)
            eta = f"{left / rate:.0f}s" if left else "0s"
            bar.update(
                task,
                advance=1,
                running=min(executor.running, left),
                left=left,
                failed=f"[red]{len(outcome.failed)} failed[/red]" if outcome.failed else "",
                eta=eta,
            )


def _write_index(out: Path, spec: SweepSpec, failed: dict[str, str]) -> None:
    runs = []
    for r in spec.runs:
        d = out / "runs" / r.dirname
        status = (
            "finished"
            if is_finished(d, r.config_hash)
            else ("failed" if r.dirname in failed else "pending")
        )
        runs.append(
            {
                "dir": f"runs/{r.dirname}",
                "label": r.label,
                "group": r.group,
                "variant": r.variant,
                "seed": r.seed,
                "params": r.params,
                "config_hash": r.config_hash,
                "status": status,
            }
        )
    index = {
        "name": spec.name,
        "baseline": spec.baseline,
        "variants": spec.variants,
        "swept_keys": spec.swept_keys,
        "allow_unequal_grids": spec.allow_unequal_grids,
        "runs": runs,
    }
    (out / "sweep.json").write_text(dumps(index))


# ---------------------------------------------------------------------------------------------
# Aggregation


def _grid_of(cfg: dict[str, Any]) -> dict[str, Any]:
    ev = cfg.get("eval", {})
    return {
        "nodes": cfg.get("nodes"),
        "data.dataset": cfg.get("data", {}).get("dataset"),
        "eval.nodes": ev.get("nodes"),
        "eval.test_samples": ev.get("test_samples"),
    }


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], MetricsRecorder]:
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    return summary, cfg, read_metrics_csv(run_dir / "metrics.csv")


def aggregate(spec: SweepSpec, out: Path, console: Console | None = None) -> dict[str, Any]:
    """stats.json and sweep.csv from the finished runs of ``spec``; a table on ``console``."""
    finished = [r for r in spec.runs if is_finished(out / "runs" / r.dirname, r.config_hash)]
    curves: dict[str, list[RunCurves]] = {}
    targets: list[float] = []
    tidy_rows = []
    for r in finished:
        summary, cfg, rec = load_run(out / "runs" / r.dirname)
        targets = cfg.get("eval", {}).get("targets", targets)
        curves.setdefault(r.group, []).append(
            run_curves(rec.rows, r.seed, float(summary["virtual_time_s"]), _grid_of(cfg))
        )
        for t, node, it, metric, value in rec.rows:
            if node == -1:
                tidy_rows.append((r, t, it, metric, value))
    write_tidy(out / "sweep.csv", spec.swept_keys, tidy_rows)
    # comparisons: the groups that share swept values (one per grid/zip point)
    comparisons: dict[str, list[str]] = {}
    for r in spec.runs:
        point = json.dumps(r.params, sort_keys=True)
        if r.group in curves and r.group not in comparisons.setdefault(point, []):
            comparisons[point].append(r.group)
    result: dict[str, Any] = {"groups": {}, "comparisons": [], "warnings": []}
    for point, groups in comparisons.items():
        members = {g: curves[g] for g in groups}
        problems = check_grids(members)
        if problems:
            msg = f"runs of one comparison differ: {'; '.join(problems[:5])}"
            if not spec.allow_unequal_grids:
                raise ConfigError(msg + " (set sweep.allow_unequal_grids = true to go on)")
            result["warnings"].append(msg)
            if console is not None:
                console.print(f"[bold red]WARNING[/bold red] {msg}")
        base_group = None
        if spec.baseline is not None:
            base_group = next((g for g in groups if _variant_of(spec, g) == spec.baseline), None)
        if base_group is not None:
            stats = compare_groups(members, base_group, targets)
        else:
            stats = {g: group_stats(runs, targets) for g, runs in members.items()}
        result["groups"].update(stats)
        result["comparisons"].append(
            {"params": json.loads(point), "baseline": base_group, "groups": groups}
        )
    result["targets"] = targets
    (out / "stats.json").write_text(dumps(result))
    if console is not None and result["groups"]:
        console.print(stats_table(result))
    return result


def _variant_of(spec: SweepSpec, group: str) -> str | None:
    return next((r.variant for r in spec.runs if r.group == group), None)


def write_tidy(path: Path, swept_keys: list[str], rows) -> None:
    """One row per run x evaluation time x aggregate metric, swept keys as columns."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "run",
                "group",
                "variant",
                "seed",
                *swept_keys,
                "time_s",
                "iteration",
                "metric",
                "value",
            ]
        )
        for r, t, it, metric, value in rows:
            params = [
                json.dumps(r.params[k]) if isinstance(r.params[k], (list, dict)) else r.params[k]
                for k in swept_keys
            ]
            w.writerow(
                [r.dirname, r.group, r.variant, r.seed, *params, repr(t), it, metric, repr(value)]
            )


def stats_table(result: dict[str, Any]) -> Table:
    targets = [str(t) for t in result.get("targets", [])]
    table = Table(title="sweep: mean ± 95% CI over seeds (t); time to target interpolated")
    table.add_column("group", style="bold")
    table.add_column("seeds", justify="right")
    table.add_column("final acc", justify="right")
    table.add_column("final loss", justify="right")
    for t in targets:
        table.add_column(f"t→{t} (s)", justify="right")
    ratio_col = any(s.get("vs_baseline") for s in result["groups"].values())
    if ratio_col and targets:
        table.add_column(f"speedup t→{targets[0]}", justify="right")
    for g, s in result["groups"].items():
        cells = [
            g,
            str(s["n"]),
            fmt_ci(s["final"].get("test_acc_mean", {})),
            fmt_ci(s["final"].get("test_loss_mean", {})),
        ]
        for t in targets:
            entry = s.get("time_to_target", {}).get(t)
            cells.append("-" if entry is None else fmt_target(entry, s["budget_s"]))
        if ratio_col and targets:
            r = s.get("vs_baseline", {}).get("speedup", {}).get(targets[0])
            cells.append("-" if r is None else fmt_ratio(r))
        table.add_row(*cells)
    return table
