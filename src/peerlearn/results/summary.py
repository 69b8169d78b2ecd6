"""``summary.json``: the headline numbers of one run."""

from __future__ import annotations

import os
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


def build_summary(
    *,
    cfg,
    recorder: MetricsRecorder,
    result,
) -> dict[str, Any]:
    c = result.counters
    iters = np.asarray(result.iterations)
    jobs_per_batch = result.train_jobs / result.train_batches if result.train_batches else 0.0
    return {
        "name": cfg.name,
        "algorithm": cfg.algorithm.name,
        "nodes": cfg.nodes,
        "seed": cfg.seed,
        "engine": cfg.engine,
        "virtual_time_s": result.virtual_time_s,
        "wall_time_s": result.wall_time_s,
        "final": final_metrics(recorder),
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
            "eval_models": result.eval_models,
        },
        "compute": {
            "threads_setting": cfg.compute.threads,
            "threads": result.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "versions": {
            "peerlearn": peerlearn.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
