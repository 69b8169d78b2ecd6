"""Run one experiment end to end: config -> setup -> engine -> results on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from peerlearn.config import ExperimentConfig, dump_config
from peerlearn.experiment import build_setup
from peerlearn.results.messages import write_messages_csv
from peerlearn.results.metrics import MetricsRecorder
from peerlearn.results.plots import write_plots
from peerlearn.results.report import summary_table
from peerlearn.results.rundir import open_run_dir
from peerlearn.results.summary import build_summary, dumps
from peerlearn.sim.engine import Simulator


@dataclass
class RunOutput:
    run_dir: Path
    summary: dict[str, Any]
    recorder: MetricsRecorder


def run_experiment(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    plots: bool = True,
    shown_dir: Path | None = None,
) -> RunOutput:
    """Run ``cfg`` and write its run directory (staged: see ``open_run_dir``); ``shown_dir`` is
    the path printed for it (a run inside a comparison that is itself still staged)."""
    console = console or Console(stderr=True, quiet=quiet)
    with open_run_dir(out, cfg.name, overwrite=overwrite) as rd:
        summary, recorder = _run_into(rd.path, cfg, console, quiet, plots)
    if not quiet:
        console.print(summary_table(summary))
        console.print(f"results in [bold]{shown_dir or rd.final}[/bold]")
    if summary["diverged"]:  # even with --quiet
        Console(stderr=True).print(
            f"[red]warning:[/red] {cfg.name}: training diverged (NaN or infinite loss from "
            f"t={summary['diverged_at_s']:g} s); train.lr = {cfg.train.lr:g} may be too high",
            highlight=False,
            soft_wrap=True,
        )
    return RunOutput(rd.final, summary, recorder)


def _run_into(
    run_dir: Path, cfg: ExperimentConfig, console: Console, quiet: bool, plots: bool
) -> tuple[dict[str, Any], MetricsRecorder]:
    setup = build_setup(cfg)
    (run_dir / "config.toml").write_text(dump_config(cfg))
    recorder = MetricsRecorder()
    stop = cfg.stop.virtual_time_s
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[vt]}"),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task(cfg.name, total=stop or None, vt="", acc="")

        def progress(t: float, acc: float | None) -> None:
            bar.update(
                task,
                completed=t if stop else None,
                vt=f"t={t:.1f}s" + (f"/{stop:g}s" if stop else ""),
                acc="" if acc is None else f"acc={acc:.3f}",
            )

        result = Simulator(setup, recorder, progress).run()
        if stop:
            bar.update(task, completed=stop)
    recorder.write_csv(run_dir / "metrics.csv")
    if result.message_log is not None:
        write_messages_csv(run_dir / "messages.csv", result.message_log)
    summary = build_summary(cfg=cfg, recorder=recorder, result=result)
    (run_dir / "summary.json").write_text(dumps(summary))
    if plots:
        write_plots(recorder, run_dir / "plots", f"{cfg.name}: {cfg.algorithm.name}")
    return summary, recorder
