"""``peerlearn compare``: the same experiment under several algorithms, side by side.

Each entry of ``--algorithms`` is a name, optionally with parameters in brackets, e.g.
``divshare[fragments=2],swift,adpsgd``. Every run starts from the same config (same data, seed,
network and budget); the algorithm section keeps the keys the algorithm accepts (``fanout`` carries
over from DivShare to Swift, ``fragments`` does not) and takes the bracketed ones on top.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from rich.console import Console

from peerlearn.config.load import (
    ConfigError,
    apply_overrides,
    carry_algorithm,
    quickstart_toml,
    read_toml,
    validate,
)
from peerlearn.config.schema import ExperimentConfig
from peerlearn.results.comparison import comparison_table, write_comparison
from peerlearn.results.messages import read_messages_csv, transfer_stats
from peerlearn.results.rundir import RunDirError, open_run_dir
from peerlearn.results.summary import dumps
from peerlearn.runner import run_experiment

#: what compare-runs reads from each summary.json
SUMMARY_KEYS = ("final", "time_to_accuracy_s", "bytes", "iterations", "wall_time_s")
_ENTRY = re.compile(r"^\s*([a-z_]+)\s*(?:\[(.*)\])?\s*$")


def parse_algorithms(spec: str) -> list[tuple[str, str, list[str]]]:
    """``"divshare[fragments=2],swift"`` -> [(label, name, ["fragments=2"]), ...]."""
    entries, depth, cur = [], 0, ""
    for ch in spec:  # split on commas outside brackets
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            entries.append(cur)
            cur = ""
        else:
            cur += ch
    entries.append(cur)
    out = []
    for entry in entries:
        m = _ENTRY.match(entry)
        if not m:
            raise ConfigError(
                f"--algorithms: cannot read {entry!r}; expected name or name[k=v,...]"
            )
        # parameters are separated by ';' or ',' (commas inside brackets do not split variants)
        raw_params = re.split(r"[;,]", m.group(2) or "")
        name, params = m.group(1), [p.strip() for p in raw_params if p.strip()]
        label = name + "".join("-" + _label_part(p) for p in params)
        out.append((label, name, params))
    labels = [e[0] for e in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--algorithms lists the same variant twice: {labels}")
    return out


def _is_config_key(param: str) -> bool:
    """``train.lr=0.1``: a dotted key of the whole config (a per-variant setting, e.g. a learning
    rate tuned for each algorithm); ``fragments=2``: a key of ``[algorithm]``."""
    return "." in param.split("=", 1)[0]


def _label_part(param: str) -> str:
    """``fragments=2`` -> ``fragments2``; ``train.lr=0.1`` -> ``lr0p1`` (the key's last part)."""
    key, _, value = param.partition("=")
    key = key.strip().rsplit(".", 1)[-1]
    return (key + value).replace(".", "p").replace(" ", "")


def variant_config(raw: dict[str, Any], name: str, params: list[str]) -> ExperimentConfig:
    # an unknown name is left for the normal validation's one-line unknown-algorithm error
    section, _ = carry_algorithm(raw.get("algorithm") or {}, name)
    overrides = [p if _is_config_key(p) else f"algorithm.{p}" for p in params]
    cfg_raw = apply_overrides({**raw, "algorithm": section}, overrides)
    return validate(cfg_raw)


def run_compare(
    config: Path | None,
    algorithms: str,
    overrides: list[str],
    out: Path | None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    baseline: str | None = None,
) -> dict[str, Any]:
    raw = read_toml(config) if config is not None else tomllib.loads(quickstart_toml())
    raw = apply_overrides(raw, overrides)
    variants = parse_algorithms(algorithms)
    cfgs = {label: variant_config(raw, name, params) for label, name, params in variants}
    base = _baseline(baseline, list(cfgs), default=variants[-1][0])  # before hours of runs
    name = next(iter(cfgs.values())).name
    console = Console(stderr=True, quiet=quiet)
    summaries: dict[str, dict[str, Any]] = {}
    recorders = {}
    with open_run_dir(out, f"{name}-compare", overwrite=overwrite) as rd:
        root = rd.path
        for label, cfg in cfgs.items():
            cfg = cfg.model_copy(update={"name": f"{cfg.name}-{label}"})
            console.print(f"[bold]{label}[/bold]")
            res = run_experiment(
                cfg, root / label, quiet=quiet, console=console, shown_dir=rd.final / label
            )
            summaries[label] = res.summary
            recorders[label] = res.recorder
        comparison = _write(root, summaries, recorders, base, {k: root / k for k in cfgs})
    _show(comparison, rd.final, quiet)
    return comparison


def _baseline(chosen: str | None, labels: list[str], *, default: str) -> str:
    base = chosen or default
    if base not in labels:
        raise ConfigError(f"--baseline {base!r} is not one of {labels}")
    return base


def _write(
    root: Path, summaries, recorders, base: str, run_dirs: dict[str, Path]
) -> dict[str, Any]:
    """comparison.json and the joint plots."""
    comparison = write_comparison(root, summaries, recorders, baseline=base)
    for label, d in run_dirs.items():  # runs with eval.log_messages: transfer-time statistics
        if (d / "messages.csv").exists():
            comparison["runs"][label]["transfer_s"] = transfer_stats(
                read_messages_csv(d / "messages.csv")
            )
    (root / "comparison.json").write_text(dumps(comparison))
    return comparison


def _show(comparison: dict[str, Any], root: Path, quiet: bool) -> None:
    if not quiet:
        Console().print(comparison_table(comparison))
        Console(stderr=True).print(f"results in [bold]{root}[/bold]")


def compare_run_dirs(
    run_dirs: list[Path],
    out: Path | None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Existing run directories side by side, e.g. a simulated run and its deployed twin.

    Labels are the directory names with the engine appended (``divshare@sim``,
    ``divshare@deploy``); time is virtual seconds for simulated runs and wall seconds since the
    common start for deployed ones, so the joint plots share an axis.
    """
    from peerlearn.results.metrics import read_metrics_csv

    summaries: dict[str, dict[str, Any]] = {}
    recorders = {}
    dirs: dict[str, Path] = {}
    for d in run_dirs:
        try:
            summary = json.loads((d / "summary.json").read_text())
            recorder = read_metrics_csv(d / "metrics.csv")
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{d} is not a finished run directory: {exc}") from None
        missing = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
        if missing or not recorder.rows:
            what = f"summary.json lacks {', '.join(missing)}" if missing else "metrics.csv is empty"
            raise RunDirError(f"{d} is not a finished run directory: {what}")
        label = f"{d.name}@{summary.get('engine', 'sim')}"
        if label in summaries:
            raise ConfigError(f"two runs are labelled {label!r}; rename one directory")
        summaries[label], recorders[label], dirs[label] = summary, recorder, d
    if not summaries:
        raise ConfigError("compare-runs needs at least one run directory")
    base = _baseline(baseline, list(summaries), default=next(iter(summaries)))
    with open_run_dir(out, "runs-compare", overwrite=overwrite) as rd:
        comparison = _write(rd.path, summaries, recorders, base, dirs)
    _show(comparison, rd.final, quiet)
    return comparison
