"""Checks of a deployment's per-node files before ``peerlearn merge`` trusts them.

``nodes/node-<id>.csv`` (metric rows) and ``nodes/node-<id>.json`` (the node's counters) come
from other processes, possibly other hosts, possibly cut short or edited. A merge must not turn
a corrupt file into a traceback, a simulator directory into an empty summary, or a row with an
unknown node id or an accuracy of 7.5 into a result: each is one error naming file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

from peerlearn.config import ExperimentConfig
from peerlearn.deploy.errors import DeployError

HEADER = "time_s,node,iteration,metric,value"


def _stats_fields() -> dict[str, type]:
    from peerlearn.deploy.node import NodeStats

    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: kinds.get(str(f.type), dict) for f in fields(NodeStats)}


def check_metric(metric: str, value: float) -> str | None:
    """What is wrong with ``value`` for ``metric`` (None: plausible)."""
    if metric.endswith("acc") or "_acc_" in metric:
        if not 0.0 <= value <= 1.0:  # NaN fails too
            return f"{metric} = {value!r} is not an accuracy in [0, 1]"
    elif metric.startswith("test_"):  # loss, rmse: NaN once training diverged
        if value < 0 or value == math.inf:
            return f"{metric} = {value!r} is negative or infinite"
    elif metric.startswith("bytes_") and (not math.isfinite(value) or value < 0):
        return f"{metric} = {value!r} is not a byte count"
    return None  # a protocol's own records: any number


def _check_csv(path: Path, node: int, n: int) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines[0].strip() != HEADER:
        raise DeployError(f"{path}, line 1: expected header {HEADER!r}")
    last = len(lines) - 1  # a last line without newline may be cut short by a killed node
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            t, nid, it, metric, value = parts
            t_, nid_, it_, value_ = float(t), int(nid), int(it), float(value)
        except ValueError:
            if k - 1 == last:
                continue
            short = line if len(line) <= 60 else line[:57] + "..."
            raise DeployError(f"{path}, line {k}: cannot read row {short!r}") from None
        if nid_ != node or not 0 <= nid_ < n:
            raise DeployError(
                f"{path}, line {k}: node id {nid_} is not this file's node {node} "
                f"(nodes are 0..{n - 1})"
            )
        if not math.isfinite(t_) or it_ < 0:
            raise DeployError(f"{path}, line {k}: time {t!r} or iteration {it!r} is invalid")
        problem = check_metric(metric, value_)
        if problem:
            raise DeployError(f"{path}, line {k}: {problem}")


def _check_json(path: Path, node: int, n: int) -> None:
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(stats, dict):
        raise DeployError(f"{path}: expected a JSON object of node counters")
    for name, kind in _stats_fields().items():
        if name not in stats:
            raise DeployError(f"{path}: missing {name!r}")
        v = stats[name]
        ok = {
            int: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            float: isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and (v >= 0 or name == "start_lateness_s"),
            bool: isinstance(v, bool),
            str: isinstance(v, str),
            dict: isinstance(v, dict),
        }[kind]
        if not ok:
            raise DeployError(f"{path}: {name} = {v!r} is not a valid value")
    if stats["node"] != node:
        raise DeployError(f"{path}: node = {stats['node']} is not this file's node {node}")
    for src, b in stats["received_from"].items():
        if not (str(src).isdigit() and int(src) < n) or not isinstance(b, int) or b < 0:
            raise DeployError(f"{path}: received_from has {src!r}: {b!r} (nodes are 0..{n - 1})")
    for reason, count in stats["rejected"].items():
        if not isinstance(count, int) or count < 0:
            raise DeployError(f"{path}: rejected[{reason!r}] = {count!r} is not a count")


def _check_messages(path: Path) -> None:
    try:
        logs = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(logs, dict) and all(
            isinstance(logs.get(k), list) and all(isinstance(r, list) for r in logs[k])
            for k in ("sent", "received")
        )
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise DeployError(f"{path}: not a message log (JSON with 'sent' and 'received' lists)")


def check_node_files(cfg: ExperimentConfig, run_dir: Path) -> None:
    """DeployError (one line) unless ``run_dir`` holds a deployment's readable node files."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            engine = json.loads(summary.read_text()).get("engine", "sim")
        except (ValueError, UnicodeDecodeError, AttributeError):
            engine = "deploy"  # a broken summary is rewritten by the merge
        if engine != "deploy":
            raise DeployError(
                f"{run_dir} is a {engine!r} run, not a deployment; merge needs nodes/node-<id>.*"
            )
    nodes_dir = run_dir / "nodes"
    n = cfg.nodes
    found = [i for i in range(n) if (nodes_dir / f"node-{i}.csv").is_file()] + [
        i for i in range(n) if (nodes_dir / f"node-{i}.json").is_file()
    ]
    if not found:
        raise DeployError(
            f"{run_dir} has no per-node files (nodes/node-<id>.csv or .json for ids "
            f"0..{n - 1}); nothing to merge"
        )
    for i in range(n):
        csv = nodes_dir / f"node-{i}.csv"
        if csv.is_file():
            _check_csv(csv, i, n)
        js = nodes_dir / f"node-{i}.json"
        if js.is_file():
            _check_json(js, i, n)
        log = nodes_dir / f"messages-{i}.json"
        if cfg.eval.log_messages and log.is_file():
            _check_messages(log)
