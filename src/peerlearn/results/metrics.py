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

    def state_dict(self) -> dict:
        """The rows so far, by column (metric names once each, rows as codes into them)."""
        names: dict[str, int] = {}
        codes = [names.setdefault(m, len(names)) for _, _, _, m, _ in self.rows]
        return {
            "time_s": np.array([r[0] for r in self.rows], dtype=np.float64),
            "node": np.array([r[1] for r in self.rows], dtype=np.int64),
            "iteration": np.array([r[2] for r in self.rows], dtype=np.int64),
            "metric_names": list(names),
            "metric": np.array(codes, dtype=np.int64),
            "value": np.array([r[4] for r in self.rows], dtype=np.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        names = state["metric_names"]
        columns = (
            state["time_s"].tolist(),
            state["node"].tolist(),
            state["iteration"].tolist(),
            [names[k] for k in state["metric"].tolist()],
            state["value"].tolist(),
        )
        if len({len(c) for c in columns}) > 1:
            raise ValueError("metrics columns of different lengths")
        self.rows = list(zip(*columns, strict=True))

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
