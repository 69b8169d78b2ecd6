"""The ``peerlearn`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peerlearn",
        description="Decentralized learning experiments, simulated in virtual time.",
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

    sub.add_parser("list", help="algorithms, datasets, models, partitions, topologies, presets")

    insp = sub.add_parser("inspect-data", help="per-node sample and label counts of a config")
    insp.add_argument("config", nargs="?", type=Path)
    insp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    show = sub.add_parser("show-config", help="print the resolved config (TOML)")
    show.add_argument("config", nargs="?", type=Path)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def _cmd_run(args, out: Console) -> int:
    from peerlearn.config import load_config
    from peerlearn.runner import run_experiment

    cfg = load_config(args.config, args.overrides)
    run_experiment(cfg, args.out, overwrite=args.overwrite, quiet=args.quiet)
    return 0


def _cmd_list(out: Console) -> int:
    from rich.table import Table

    from peerlearn.data.registry import DATASETS
    from peerlearn.models.zoo import MODELS
    from peerlearn.network.presets import PRESETS
    from peerlearn.network.topology import TOPOLOGIES
    from peerlearn.protocols.registry import PROTOCOLS

    partitions = {
        "iid": "seeded shuffle split in equal parts",
        "kshard": "sort by label; each node takes `shards` contiguous shards at random",
        "dirichlet": "per-class Dirichlet(alpha) proportions, a minimum of samples per node",
        "by_user": "MovieLens: contiguous blocks of users, local 70/30 train/test",
    }
    groups = {
        "algorithms": {k: v.description for k, v in PROTOCOLS.load_all().items()},
        "datasets": DATASETS,
        "models": MODELS,
        "partitions": partitions,
        "topologies": TOPOLOGIES,
        "network presets": PRESETS,
    }
    for title, items in groups.items():
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, desc in items.items():
            table.add_row(escape(name), escape(desc))
        out.print(table)
    return 0


def _cmd_inspect(args, out: Console) -> int:
    from peerlearn.config import load_config
    from peerlearn.data.inspect import render_histogram
    from peerlearn.data.partition import make_partition
    from peerlearn.data.registry import load_dataset

    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    ds = load_dataset(
        d.dataset,
        d.root,
        variant=d.variant,
        seed=cfg.seed,
        download=d.download,
        synthetic=d.synthetic or None,
    )
    part = make_partition(
        ds,
        d.partition,
        cfg.nodes,
        cfg.seed,
        shards=d.shards,
        alpha=d.alpha,
        min_samples=d.min_samples,
    )
    out.print(render_histogram(ds, part))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Console()
    err = Console(stderr=True)
    from peerlearn.config import ConfigError
    from peerlearn.data.base import DatasetNotFound
    from peerlearn.results.rundir import RunDirError

    try:
        if args.command == "run":
            return _cmd_run(args, out)
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
        if args.command == "list":
            return _cmd_list(out)
        if args.command == "inspect-data":
            return _cmd_inspect(args, out)
        if args.command == "show-config":
            from peerlearn.config import dump_config, load_config

            print(dump_config(load_config(args.config, args.overrides)), end="")
            return 0
    except (ConfigError, RunDirError, DatasetNotFound) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return USAGE_ERROR
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
