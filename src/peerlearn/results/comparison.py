"""Side-by-side results of several runs: joint plots, a table, time-to-accuracy ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.table import Table

from peerlearn.results.metrics import ALL_NODES, MetricsRecorder
from peerlearn.results.plots import mean_curve


def _ratio(base: float | None, other: float | None) -> float | None:
    """How many times faster ``other`` reached a target than ``base`` (None if undefined)."""
    if base is None or other is None or other <= 0:
        return None
    return base / other


def write_comparison(
    root: Path,
    summaries: dict[str, dict[str, Any]],
    recorders: dict[str, MetricsRecorder],
    *,
    baseline: str,
) -> dict[str, Any]:
    base_tta = summaries[baseline]["time_to_accuracy_s"]
    rows = {}
    for label, s in summaries.items():
        tta = s["time_to_accuracy_s"]
        rows[label] = {
            "final": s["final"],
            "time_to_accuracy_s": tta,
            "speedup_vs_baseline": {t: _ratio(base_tta.get(t), v) for t, v in tta.items()},
            "bytes": s["bytes"],
            "iterations": s["iterations"],
            "wall_time_s": s["wall_time_s"],
        }
    _plots(root / "plots", recorders)
    return {"baseline": baseline, "runs": rows}


def _plots(out: Path, recorders: dict[str, MetricsRecorder]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for metric in ("test_acc", "test_rmse", "test_loss"):
        if not any(r.series(f"{metric}_mean") for r in recorders.values()):
            continue
        for xname, xlabel in (("time", "virtual time (s)"), ("bytes", "MB sent per node")):
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            for label, rec in recorders.items():
                t, m, s = mean_curve(rec, metric)
                sent = dict(rec.series("bytes_sent_mean", ALL_NODES))
                x = t if xname == "time" else np.array([sent.get(v, np.nan) for v in t]) / 1e6
                ax.plot(x, m, label=label)
                ax.fill_between(x, m - s, m + s, alpha=0.15)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / f"{metric.removeprefix('test_')}_vs_{xname}.png", dpi=110)
            plt.close(fig)


def comparison_table(comparison: dict[str, Any]) -> Table:
    runs = comparison["runs"]
    targets = list(next(iter(runs.values()))["time_to_accuracy_s"])
    table = Table(title=f"comparison (ratios vs {comparison['baseline']})")
    table.add_column("algorithm", style="bold")
    table.add_column("final acc", justify="right")
    for t in targets:
        table.add_column(f"t→{t}", justify="right")
    table.add_column("MB sent/node", justify="right")
    table.add_column("iterations", justify="right")
    transfers = any("transfer_s" in r for r in runs.values())
    if transfers:
        table.add_column("median transfer", justify="right")
    for label, r in runs.items():
        f = r["final"]
        acc = f.get("test_acc_mean")
        cells = [label, "-" if acc is None else f"{acc:.3f}"]
        for t in targets:
            v, sp = r["time_to_accuracy_s"][t], r["speedup_vs_baseline"][t]
            cells.append("never" if v is None else f"{v:.0f}s" + (f" ({sp:.2f}x)" if sp else ""))
        cells.append(f"{r['bytes']['sent_per_node_mean'] / 1e6:.1f}")
        cells.append(f"{r['iterations']['mean']:.1f}")
        if transfers:
            median = r.get("transfer_s", {}).get("median")
            cells.append("-" if median is None else f"{median:.3f}s")
        table.add_row(*cells)
    return table
