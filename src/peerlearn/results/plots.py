"""Plots of a run: mean test accuracy (and its spread over nodes) against time and bytes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from peerlearn.results.metrics import ALL_NODES, MetricsRecorder


def mean_curve(rec: MetricsRecorder, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation times, the mean over nodes and its std (0 where none was recorded)."""
    mean = rec.series(f"{metric}_mean", ALL_NODES)
    std = dict(rec.series(f"{metric}_std", ALL_NODES))
    t = np.array([p[0] for p in mean])
    m = np.array([p[1] for p in mean])
    s = np.array([std.get(x, 0.0) for x in t])
    return t, m, s


def write_plots(rec: MetricsRecorder, out_dir: Path, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in ("test_acc", "test_rmse", "test_loss") if rec.series(f"{m}_mean")]
    sent = dict(rec.series("bytes_sent_mean", ALL_NODES))
    written = []
    for metric in metrics:
        t, m, s = mean_curve(rec, metric)
        label = metric.removeprefix("test_")
        for xname, x, xlabel in (
            ("time", t, "virtual time (s)"),
            ("bytes", np.array([sent.get(v, np.nan) for v in t]) / 1e6, "MB sent per node"),
        ):
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(x, m, label=f"mean {label}")
            ax.fill_between(x, m - s, m + s, alpha=0.25, label="± std over nodes")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"test {label}")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
            path = out_dir / f"{label}_vs_{xname}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
