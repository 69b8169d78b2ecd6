"""``summary.json``: the headline numbers of one run."""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any

import numpy as np
import torch

import peerlearn
from peerlearn.compute.fused import kernel_loaded
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
        **({"churn": result.churn} if result.churn is not None else {}),
        "finished_all_nodes": result.finished_all,
        "profile": {
            "train_wall_s": result.train_wall_s,
            "eval_wall_s": result.eval_wall_s,
            "engine_wall_s": result.wall_time_s - result.train_wall_s - result.eval_wall_s,
            "train_batches": result.train_batches,
            "jobs_per_batch": jobs_per_batch,
            "virtual_s_per_wall_s": result.virtual_time_s / max(result.wall_time_s, 1e-9),
            "eval_models": result.eval_models,
            **({"spilled": result.spill} if result.spill is not None else {}),
        },
        "compute": {
            "threads_setting": cfg.compute.threads,
            "threads": result.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            **({"fused": True, "fused_kernel": kernel_loaded()} if cfg.compute.fused else {}),
        },
        "versions": {
            "peerlearn": peerlearn.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    return finite_or_none(summary)


def deploy_profile(
    node_stats: list[dict[str, Any]],
    *,
    phases: dict[str, float] | None,
    launcher_t0: float | None,
    now: float,
) -> dict[str, Any]:
    """``profile`` of a deployed run: phases on one clock (the launcher's monotonic clock),
    per-node figures as means over the nodes that reported.

    Phases (launcher clock, consecutive, so they add up to at most ``launcher_wall_s``):
    ``prepare`` (checks, run directory), ``setup`` (processes started until the common start:
    imports, data, model, warm-up), ``run`` (common start until the last node process is gone,
    their stopping and writing included), ``merge`` (until this summary). Without the launcher
    (``peerlearn merge`` later) only the per-node figures are known (``clock: "nodes"``).
    A node's training and evaluation times are measured in its process's one torch thread
    (not the wait for it), so they never exceed the run, and the nodes of one process together
    do not either.
    """
    reporting = len(node_stats)
    evaluating = [s["eval_wall_s"] for s in node_stats if s["eval_wall_s"] > 0]
    train = [s["train_wall_s"] for s in node_stats]
    jobs = [s["train_jobs"] for s in node_stats]
    out: dict[str, Any] = {
        "clock": "nodes",
        "nodes_reporting": reporting,
        "train_wall_s_per_node_mean": float(np.mean(train)) if train else 0.0,
        "train_wall_s_per_node_max": float(max(train, default=0.0)),
        "eval_wall_s_per_evaluating_node_mean": float(np.mean(evaluating)) if evaluating else 0.0,
        "train_jobs": int(sum(jobs)),
        "train_jobs_per_node_mean": float(np.mean(jobs)) if jobs else 0.0,
    }
    if phases is None or launcher_t0 is None or "t_spawn" not in phases:
        return out
    t_spawn = phases["t_spawn"]
    t_end = phases.get("t_end", now)
    t_start = min(phases.get("t_start", t_end), t_end)  # not started: set-up until the end
    out["clock"] = "launcher"
    out["launcher_wall_s"] = now - launcher_t0
    out["prepare_wall_s"] = t_spawn - launcher_t0
    out["setup_wall_s"] = t_start - t_spawn
    out["run_wall_s"] = t_end - t_start
    out["merge_wall_s"] = now - t_end
    run = out["run_wall_s"]
    out["train_share_of_run_mean"] = out["train_wall_s_per_node_mean"] / run if run > 0 else 0.0
    return out
