"""Run one experiment end to end: config -> setup -> engine -> results on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from peerlearn.config import ExperimentConfig, dump_config, load_config
from peerlearn.experiment import build_setup
from peerlearn.results.messages import write_messages_csv
from peerlearn.results.metrics import MetricsRecorder
from peerlearn.results.plots import write_plots
from peerlearn.results.report import summary_table
from peerlearn.results.rundir import open_run_dir, prepare_run_dir
from peerlearn.results.summary import build_summary, dumps
from peerlearn.sim.checkpoint import (
    Checkpointer,
    CheckpointError,
    Every,
    config_digest,
    load_into,
    parse_every,
    read_checkpoint,
)
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
    checkpoint_every: Every | None = None,
    shown_dir: Path | None = None,
) -> RunOutput:
    """Run ``cfg`` and write its run directory.

    Without checkpoints the run is staged (see ``open_run_dir``): the directory appears only
    when the run succeeded. With ``checkpoint_every`` it is written in place, so that
    ``--resume`` finds its checkpoint after a crash. ``shown_dir`` is the path printed for it
    (a run inside a comparison that is itself still staged)."""
    console = console or Console(stderr=True, quiet=quiet)
    if checkpoint_every is None:
        with open_run_dir(out, cfg.name, overwrite=overwrite) as rd:
            summary, recorder = _run_into(rd.path, cfg, console, quiet, plots, None)
        final = rd.final
    else:
        final = prepare_run_dir(out, cfg.name, overwrite=overwrite)
        try:
            summary, recorder = _run_into(final, cfg, console, quiet, plots, checkpoint_every)
        except BaseException:
            if not any(final.iterdir()):
                final.rmdir()  # leave nothing behind for a run that never started
            raise
    _report(cfg, summary, console, quiet, shown_dir or final)
    return RunOutput(final, summary, recorder)


def _report(
    cfg: ExperimentConfig, summary: dict[str, Any], console: Console, quiet: bool, shown: Path
) -> None:
    if not quiet:
        console.print(summary_table(summary))
        console.print(f"results in [bold]{shown}[/bold]")
    if summary["diverged"]:  # even with --quiet
        Console(stderr=True).print(
            f"[red]warning:[/red] {cfg.name}: training diverged (NaN or infinite loss from "
            f"t={summary['diverged_at_s']:g} s); train.lr = {cfg.train.lr:g} may be too high",
            highlight=False,
            soft_wrap=True,
        )


def _run_into(
    run_dir: Path,
    cfg: ExperimentConfig,
    console: Console,
    quiet: bool,
    plots: bool,
    checkpoint_every: Every | None,
) -> tuple[dict[str, Any], MetricsRecorder]:
    setup = build_setup(cfg)
    (run_dir / "config.toml").write_text(dump_config(cfg))
    sim = Simulator(setup, MetricsRecorder())
    hook = Checkpointer(run_dir, cfg, checkpoint_every) if checkpoint_every else None
    return _simulate(cfg, run_dir, sim, hook, console=console, quiet=quiet, plots=plots)


def resume_experiment(
    run_dir: Path,
    *,
    cfg: ExperimentConfig | None = None,
    quiet: bool = False,
    console: Console | None = None,
    plots: bool = True,
    checkpoint_every: Every | None = None,
) -> RunOutput:
    """Go on with the run in ``run_dir`` from its checkpoint, to the same results.

    ``cfg``, if given, must resolve to the run's own config. Checkpoints go on every
    ``checkpoint_every``, or as often as before. ``CheckpointError`` if anything does not fit.
    """
    console = console or Console(stderr=True, quiet=quiet)
    run_dir = Path(run_dir)
    saved = load_config(run_dir / "config.toml")
    if cfg is not None and config_digest(cfg) != config_digest(saved):
        raise CheckpointError(
            f"the config given differs from {run_dir / 'config.toml'}; a run resumes under "
            "its own config only"
        )
    manifest, state = read_checkpoint(run_dir, saved)  # verified before the slow setup
    sim = Simulator(build_setup(saved), MetricsRecorder())
    load_into(sim, state, run_dir)
    del state
    hook = Checkpointer(
        run_dir,
        saved,
        checkpoint_every or parse_every(str(manifest.get("every", "10m"))),
        sequence=int(manifest["sequence"]),
        resumed_at=sim.checkpoint_at,
    )
    if not quiet:
        console.print(
            f"resuming [bold]{run_dir}[/bold] at t={sim.now:.6g}s "
            f"(checkpoint {manifest['sequence']})"
        )
    summary, recorder = _simulate(
        saved, run_dir, sim, hook, console=console, quiet=quiet, plots=plots
    )
    _report(saved, summary, console, quiet, run_dir)
    return RunOutput(run_dir, summary, recorder)


def _simulate(
    cfg: ExperimentConfig,
    run_dir: Path,
    sim: Simulator,
    hook: Checkpointer | None,
    *,
    console: Console,
    quiet: bool,
    plots: bool,
) -> tuple[dict[str, Any], MetricsRecorder]:
    """Run ``sim`` to its end and write the results into ``run_dir``."""
    recorder = sim.recorder
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

        sim.progress = progress
        result = sim.run(hook)
        if stop:
            bar.update(task, completed=stop)
    recorder.write_csv(run_dir / "metrics.csv")
    if result.message_log is not None:
        write_messages_csv(run_dir / "messages.csv", result.message_log)
    summary = build_summary(cfg=cfg, recorder=recorder, result=result)
    if hook is not None:
        summary["checkpoints"] = hook.stats()
    (run_dir / "summary.json").write_text(dumps(summary))
    if plots:
        write_plots(recorder, run_dir / "plots", f"{cfg.name}: {cfg.algorithm.name}")
    if hook is not None:
        hook.remove()  # the results are written: nothing is left to resume
    return summary, recorder
