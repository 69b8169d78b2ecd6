"""``summary.json``: the headline numbers of one run."""

from __future__ import annotations

import json
import math
import platform
from typing import Any

import numpy as np
import torch

import peerlearn
from peerlearn.results.metrics import ALL_NODES, MetricsRecorder


def time_to_accuracy(
    recorder: MetricsRecorder, targets: list[float], metric: str = "test_acc_mean"
) -> dict[str, float | None]:
    """First evaluation time at which the mean test accuracy reaches each target (None if never)."""
    series = recorder.series(metric, ALL_NODES)
    out: dict[str, float | None] = {}
    for target in targets:
        hit = next((t for t, v in series if v >= target), None)
        out[str(target)] = hit
    return out


def final_metrics(recorder: MetricsRecorder) -> dict[str, float]:
    """The last evaluation's aggregates, keyed like ``test_acc_mean``."""
    last: dict[str, float] = {}
    for _, node, _, metric, value in recorder.rows:
        if node == ALL_NODES and metric.startswith("test_"):
            last[metric] = value
    return last


def divergence(recorder: MetricsRecorder) -> float | None:
    """The first time a test or training metric became NaN or infinite (None: never)."""
    return min(
        (
            t
            for t, _, _, metric, value in recorder.rows
            if (metric.startswith("test_") or metric.startswith("train_"))
            and not math.isfinite(value)
        ),
        default=None,
    )


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON (non-finite floats as null, never a bare NaN), indented, with a newline."""
    return json.dumps(finite_or_none(obj), indent=2, allow_nan=False) + "\n"


def build_summary(
    *,
    cfg,
    recorder: MetricsRecorder,
    result,
) -> dict[str, Any]:
    c = result.counters
    iters = np.asarray(result.iterations)
    jobs_per_batch = result.train_jobs / result.train_batches if result.train_batches else 0.0
    diverged_at = divergence(recorder)
    summary = {
        "name": cfg.name,
        "algorithm": cfg.algorithm.name,
        "nodes": cfg.nodes,
        "seed": cfg.seed,
        "engine": cfg.engine,
        "virtual_time_s": result.virtual_time_s,
        "wall_time_s": result.wall_time_s,
        "final": final_metrics(recorder),
        # training blew up (NaN or infinite loss): the final numbers mean nothing
        "diverged": diverged_at is not None,
        "diverged_at_s": diverged_at,
        "time_to_accuracy_s": time_to_accuracy(recorder, cfg.eval.targets),
        # transfers cut off by a drop or by the end of the run leave fractions of bytes: round
        "bytes": {
            "sent": round(float(result.bytes_sent.sum())),
            "delivered": round(float(c.delivered.sum())),
            "wasted": round(float(c.wasted.sum())),
            "data": round(float(c.data.sum())),
            "meta": round(float(c.meta.sum())),
            "sent_per_node_mean": float(result.bytes_sent.mean()),
        },
        "iterations": {
            "mean": float(iters.mean()),
            "min": int(iters.min()),
            "max": int(iters.max()),
            "per_node": iters.tolist(),
        },
        "messages": {"delivered": result.messages_delivered, "dropped": result.messages_dropped},
        "finished_all_nodes": result.finished_all,
        "profile": {
            "train_wall_s": result.train_wall_s,
            "eval_wall_s": result.eval_wall_s,
            "engine_wall_s": result.wall_time_s - result.train_wall_s - result.eval_wall_s,
            "train_batches": result.train_batches,
            "jobs_per_batch": jobs_per_batch,
            "virtual_s_per_wall_s": result.virtual_time_s / max(result.wall_time_s, 1e-9),
        },
        "versions": {
            "peerlearn": peerlearn.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    return finite_or_none(summary)
