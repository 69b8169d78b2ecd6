"""Metrics in long format: one row per (time, node, iteration, metric, value).

Node -1 marks a value aggregated over nodes (for example ``test_acc_mean``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ALL_NODES = -1
COLUMNS = ("time_s", "node", "iteration", "metric", "value")


@dataclass
class MetricsRecorder:
    rows: list[tuple[float, int, int, str, float]] = field(default_factory=list)

    def add(self, time: float, node: int, iteration: int, metric: str, value: float) -> None:
        self.rows.append((float(time), int(node), int(iteration), metric, float(value)))

    def add_spread(self, time: float, iteration: int, metric: str, values: np.ndarray) -> None:
        """``metric``'s mean, std, min and max over nodes, as node -1 rows (both engines)."""
        for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            self.add(time, ALL_NODES, iteration, f"{metric}_{stat}", float(fn(values)))

    def series(self, metric: str, node: int = ALL_NODES) -> list[tuple[float, float]]:
        """(time, value) pairs of one metric for one node (or the aggregate)."""
        return [(t, v) for t, n, _, m, v in self.rows if m == metric and n == node]

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for t, n, it, m, v in self.rows:
                # repr keeps full float precision, so identical runs give identical files
                w.writerow((repr(t), n, it, m, repr(v)))


def read_metrics_csv(path: Path) -> MetricsRecorder:
    rec = MetricsRecorder()
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rec.add(
                float(row["time_s"]),
                int(row["node"]),
                int(row["iteration"]),
                row["metric"],
                float(row["value"]),
            )
    return rec
