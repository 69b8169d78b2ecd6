"""The ``peerlearn`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peerlearn",
        description="Decentralized learning experiments, simulated in virtual time or deployed.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment (no CONFIG: the built-in quickstart)")
    run.add_argument("config", nargs="?", type=Path, help="experiment TOML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set train.lr=0.1 (repeatable)",
    )
    run.add_argument("--out", type=Path, help="run directory (default: runs/<name>[-k])")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar or table")
    run.add_argument(
        "--checkpoint-every",
        metavar="INTERVAL",
        help="checkpoint into the run directory every INTERVAL of wall-clock time (30s, 10m, "
        "1h) or of virtual time (50vs); see docs/checkpoint.md",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="go on with an interrupted run from its checkpoint, to the same results",
    )

    cmp = sub.add_parser("compare", help="one experiment under several algorithms, side by side")
    cmp.add_argument("config", nargs="?", type=Path, help="experiment TOML file")
    cmp.add_argument(
        "--algorithms",
        required=True,
        help="comma-separated names, each optionally with parameters: divshare[fragments=2],swift",
    )
    cmp.add_argument("--baseline", help="the variant ratios are taken against (default: last)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp.add_argument(
        "--out", type=Path, help="directory for all runs (default: runs/<name>-compare)"
    )
    cmp.add_argument("--overwrite", action="store_true")
    cmp.add_argument("--quiet", action="store_true")
    _sweep_args(cmp, seeds=True)

    swp = sub.add_parser("sweep", help="a grid of configs x algorithms x seeds; resumable")
    swp.add_argument("sweep_file", type=Path, help="sweep TOML file (docs/sweeps.md)")
    swp.add_argument("--out", type=Path, help="sweep directory (default: sweep.out)")
    swp.add_argument("--overwrite", action="store_true", help="replace a non-sweep --out")
    swp.add_argument("--quiet", action="store_true")
    _sweep_args(swp, seeds=False)

    rep = sub.add_parser("report", help="one self-contained HTML page from sweep directories")
    rep.add_argument("dirs", nargs="+", type=Path, help="sweep directories")
    rep.add_argument("-o", "--output", type=Path, default=Path("report.html"))

    evi = sub.add_parser(
        "evidence",
        help="a compact, committable copy of a sweep directory (aggregate rows; stats recomputed)",
    )
    evi.add_argument("sweep_dir", type=Path, help="sweep directory")
    evi.add_argument("--out", type=Path, required=True, help="evidence directory to write")
    evi.add_argument("--overwrite", action="store_true", help="replace an earlier evidence copy")

    cruns = sub.add_parser(
        "compare-runs", help="finished run directories side by side (e.g. simulated vs deployed)"
    )
    cruns.add_argument("run_dirs", nargs="+", type=Path)
    cruns.add_argument("--baseline", help="label ratios are taken against (default: the first)")
    cruns.add_argument("--out", type=Path, help="directory for the joint plots and table")
    cruns.add_argument("--overwrite", action="store_true")
    cruns.add_argument("--quiet", action="store_true")

    dep = sub.add_parser("deploy", help="run every node as its own process here (real sockets)")
    dep.add_argument("config", nargs="?", type=Path, help="experiment TOML file")
    dep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    dep.add_argument("--out", type=Path, help="run directory (default: runs/<name>[-k])")
    dep.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    dep.add_argument("--quiet", action="store_true")
    dep.add_argument(
        "--emulate",
        action="store_true",
        help="one network namespace per node, links shaped with tc (Linux, root)",
    )

    ecl = sub.add_parser(
        "emulate-cleanup", help="remove namespaces left by emulated runs whose launcher is gone"
    )
    ecl.add_argument("--prefix", help="only namespaces starting with this (e.g. pl1234-)")
    ecl.add_argument("--force", action="store_true", help="also those of live launchers")

    node = sub.add_parser("node", help="run some nodes of a deployment in this process")
    node.add_argument("config", type=Path, help="experiment TOML file (the same on every host)")
    node.add_argument("--ids", required=True, help="node ids, e.g. 0,1 or 0-29")
    node.add_argument("--hosts", type=Path, help="hosts file: one 'ADDRESS IDS' line per host")
    node.add_argument("--out", type=Path, required=True, help="folder for node-<id>.csv/.json")
    node.add_argument("--start-at", type=float, help="common start, Unix epoch seconds")
    node.add_argument("--sync-dir", type=Path, help="(launcher) ready files and start file")
    node.add_argument("--parent-pid", type=int, help="(launcher) stop if this parent goes away")
    node.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    merge = sub.add_parser("merge", help="per-node files of a deployment -> one run directory")
    merge.add_argument("run_dir", type=Path, help="holds config.toml and nodes/node-<id>.*")

    keys = sub.add_parser("keys", help="ZeroMQ CURVE key pairs for deploy.keys_dir")
    keys.add_argument("dir", type=Path)
    keys.add_argument("--nodes", type=int, required=True)
    keys.add_argument("--overwrite", action="store_true", help="replace keys already in DIR")

    lst = sub.add_parser(
        "list", help="algorithms, models, datasets, partitions, topologies, presets, payloads"
    )
    lst.add_argument(
        "--plugins",
        nargs="+",
        metavar="MODULE",
        help="also import these plugin modules (as a config's plugins = [...] would)",
    )

    insp = sub.add_parser("inspect-data", help="per-node sample and label counts of a config")
    insp.add_argument("config", nargs="?", type=Path)
    insp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    show = sub.add_parser("show-config", help="print the resolved config (TOML)")
    show.add_argument("config", nargs="?", type=Path)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def _sweep_args(p: argparse.ArgumentParser, *, seeds: bool) -> None:
    if seeds:
        p.add_argument(
            "--seeds",
            help="run every variant under these seeds (1-5 or 1,3,7): "
            "a small sweep with mean and 95%% CI over seeds",
        )
    p.add_argument("--jobs", type=int, help="runs at once on this machine (default 1)")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: auto, local or an address")


def _cmd_sweep(args) -> int:
    from peerlearn.sweep import load_sweep

    spec = load_sweep(args.sweep_file)
    if args.out is not None:
        spec.out = args.out
    return _run_sweep(spec, args)


def _run_sweep(spec, args) -> int:
    """Run a sweep with the command line's executor; its failed runs listed, exit 1 if any."""
    from peerlearn.sweep import run_sweep

    outcome = run_sweep(
        spec, jobs=args.jobs, ray=args.ray, quiet=args.quiet, overwrite=args.overwrite
    )
    err = Console(stderr=True)
    if outcome.failed:
        err.print(f"[red]{len(outcome.failed)} run(s) failed[/red] (rerun to retry them):")
        for name, error in outcome.failed.items():
            last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
            err.print(f"  {escape(name)}: {escape(last)}", soft_wrap=True)
            err.print(f"    {escape(str(outcome.out / 'runs' / name))}/error.txt", soft_wrap=True)
        return 1
    err.print(f"results in [bold]{escape(str(outcome.out))}[/bold]")
    return 0


def _cmd_evidence(args, out: Console) -> int:
    from peerlearn.sweep.evidence import export_evidence

    res = export_evidence(args.sweep_dir, args.out, overwrite=args.overwrite, console=out)
    out.print(f"{len(res.copied)} finished run(s) in [bold]{escape(str(res.dest))}[/bold]")
    if res.left_out:
        out.print(f"left out (not finished): {escape(', '.join(res.left_out))}", soft_wrap=True)
    return 0


def _cmd_compare_seeds(args) -> int:
    from peerlearn.sweep import compare_sweep

    spec = compare_sweep(
        args.config, args.algorithms, args.overrides, args.seeds, args.out, args.baseline
    )
    return _run_sweep(spec, args)


def _cmd_run(args, out: Console) -> int:
    from peerlearn.config import load_config
    from peerlearn.runner import run_experiment
    from peerlearn.sim.checkpoint import CheckpointError, parse_every

    every = parse_every(args.checkpoint_every) if args.checkpoint_every else None
    if args.resume is not None:
        from peerlearn.runner import resume_experiment

        if args.out is not None or args.overwrite:
            raise CheckpointError("--resume goes on in RUN_DIR itself; drop --out/--overwrite")
        # a config or --set given with --resume must resolve to the run's own config
        base = args.config if args.config is not None else args.resume / "config.toml"
        given = load_config(base, args.overrides) if args.config or args.overrides else None
        resume_experiment(args.resume, cfg=given, quiet=args.quiet, checkpoint_every=every)
        return 0
    cfg = load_config(args.config, args.overrides)
    if cfg.engine == "deploy":
        if every is not None:
            raise CheckpointError("--checkpoint-every is for simulated runs, not deployments")
        return _cmd_deploy(args, out)
    run_experiment(
        cfg, args.out, overwrite=args.overwrite, quiet=args.quiet, checkpoint_every=every
    )
    return 0


def _cmd_deploy(args, out: Console) -> int:
    from peerlearn.config import load_config
    from peerlearn.deploy.launcher import deploy_experiment

    overrides = list(args.overrides)
    if getattr(args, "emulate", False):
        overrides.append("deploy.emulate=true")
    cfg = load_config(args.config, overrides)
    run_dir, summary = deploy_experiment(cfg, args.out, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        from peerlearn.results.report import summary_table

        out.print(summary_table(summary))
        out.print(f"results in [bold]{run_dir}[/bold]")
    return 0


def _cmd_node(args) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from peerlearn.config import load_config
    from peerlearn.deploy.process import parse_hosts, parse_ids, run_node_process

    cfg = load_config(args.config, args.overrides)
    hosts = parse_hosts(args.hosts, cfg.nodes) if args.hosts else None
    run_node_process(
        cfg,
        parse_ids(args.ids),
        out_dir=args.out,
        hosts=hosts,
        start_at=args.start_at,
        sync_dir=args.sync_dir,
        parent_pid=args.parent_pid,
    )
    return 0


def _cmd_merge(args, out: Console) -> int:
    from peerlearn.config import load_config
    from peerlearn.deploy.launcher import merge_run
    from peerlearn.deploy.nodefiles import check_node_files

    cfg = load_config(args.run_dir / "config.toml", [])
    check_node_files(cfg, args.run_dir)
    merge_run(cfg, args.run_dir)
    out.print(f"merged into [bold]{args.run_dir}[/bold]")
    return 0


def _cmd_list(args, out: Console) -> int:
    from rich.table import Table

    from peerlearn.components import ALL
    from peerlearn.plugins import load_entry_points, load_modules

    load_entry_points()
    load_modules(args.plugins or [])
    for title, registry in ALL.items():
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("from", style="dim")
        for entry in registry.entries():
            table.add_row(escape(entry.name), escape(entry.description), escape(entry.source))
        out.print(table)
    return 0


def _cmd_inspect(args, out: Console) -> int:
    from peerlearn.config import load_config
    from peerlearn.data.inspect import render_histogram
    from peerlearn.experiment import load_data

    ds, part = load_data(load_config(args.config, args.overrides))
    out.print(render_histogram(ds, part))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning on a core another process may need; read
    # once when torch loads OpenMP, so set before anything imports torch (docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = _parser().parse_args(argv)
    out = Console()
    err = Console(stderr=True)
    from peerlearn.config import ConfigError
    from peerlearn.data.base import DatasetNotFound
    from peerlearn.deploy.errors import DeployError
    from peerlearn.plugins import PluginError
    from peerlearn.registry import RegistryError
    from peerlearn.results.rundir import RunDirError
    from peerlearn.sim.errors import CheckpointError, SpillError

    try:
        if args.command == "run":
            return _cmd_run(args, out)
        if args.command == "compare" and (args.seeds or args.jobs or args.ray):
            return _cmd_compare_seeds(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "report":
            from peerlearn.results.html_report import write_report

            path = write_report(args.dirs, args.output)
            out.print(f"report in [bold]{escape(str(path))}[/bold]")
            return 0
        if args.command == "evidence":
            return _cmd_evidence(args, out)
        if args.command == "compare":
            from peerlearn.compare import run_compare

            run_compare(
                args.config,
                args.algorithms,
                args.overrides,
                args.out,
                overwrite=args.overwrite,
                quiet=args.quiet,
                baseline=args.baseline,
            )
            return 0
        if args.command == "compare-runs":
            from peerlearn.compare import compare_run_dirs

            compare_run_dirs(
                args.run_dirs,
                args.out,
                overwrite=args.overwrite,
                quiet=args.quiet,
                baseline=args.baseline,
            )
            return 0
        if args.command == "deploy":
            return _cmd_deploy(args, out)
        if args.command == "node":
            return _cmd_node(args)
        if args.command == "emulate-cleanup":
            from peerlearn.deploy.emulate import cleanup

            removed = cleanup(args.prefix, force=args.force)
            out.print(
                f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed else "")
            )
            return 0
        if args.command == "merge":
            return _cmd_merge(args, out)
        if args.command == "keys":
            from peerlearn.deploy.keys import generate_keys

            generate_keys(args.dir, args.nodes, overwrite=args.overwrite)
            out.print(f"{args.nodes} CURVE key pairs in [bold]{args.dir}[/bold]")
            return 0
        if args.command == "list":
            return _cmd_list(args, out)
        if args.command == "inspect-data":
            return _cmd_inspect(args, out)
        if args.command == "show-config":
            from peerlearn.config import dump_config, load_config

            print(dump_config(load_config(args.config, args.overrides)), end="")
            return 0
    except (
        ConfigError,
        RunDirError,
        DatasetNotFound,
        DeployError,
        CheckpointError,
        SpillError,
        PluginError,
        RegistryError,
    ) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return USAGE_ERROR
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
