"""Per-node label counts of a partition, as numbers and as a table for `peerlearn inspect-data`.

For regression (MovieLens) the "classes" are integer stars 1..5: a rating is rounded half up
(0.5 -> 1, 3.5 -> 4) and clipped to 1..5, which keeps the table narrow and shows rating skew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from peerlearn.data.base import Dataset
from peerlearn.data.partition import Partition

if TYPE_CHECKING:
    from rich.table import Table

STARS = (1, 2, 3, 4, 5)
MAX_CLASS_COLUMNS = 20


def class_names(dataset: Dataset) -> list[str]:
    """Column labels: class names when the dataset has them, else numbers (stars for ratings)."""
    if dataset.task == "regression":
        return [f"{s}*" for s in STARS]
    names = dataset.info.get("classes")
    k = int(dataset.num_classes or 0)
    if names is not None and len(names) == k:
        return [str(n) for n in names]
    return [str(c) for c in range(k)]


def _targets(dataset: Dataset) -> tuple[np.ndarray, int]:
    y = dataset.train_y.detach().cpu().numpy()
    if dataset.task == "regression":
        stars = np.clip(np.floor(y.astype(np.float64) + 0.5), STARS[0], STARS[-1])
        return (stars - STARS[0]).astype(np.int64), len(STARS)
    return y.astype(np.int64), int(dataset.num_classes or int(y.max(initial=-1)) + 1)


def label_histogram(dataset: Dataset, partition: Partition) -> np.ndarray:
    """(n_nodes, n_columns) int64 counts of training samples per class (or star) on each node."""
    targets, k = _targets(dataset)
    out = np.zeros((partition.n_nodes, k), dtype=np.int64)
    for node, idx in enumerate(partition.train):
        out[node] = np.bincount(targets[np.asarray(idx, dtype=np.int64)], minlength=k)[:k]
    return out


def summary(dataset: Dataset, partition: Partition) -> dict[str, int | float]:
    """The numbers behind the table's caption, for scripts and tests."""
    hist = label_histogram(dataset, partition)
    sizes = hist.sum(axis=1)
    assigned = int(sizes.sum())
    return {
        "nodes": partition.n_nodes,
        "assigned": assigned,
        "unassigned": dataset.n_train - assigned,
        "min_size": int(sizes.min()),
        "max_size": int(sizes.max()),
        "mean_classes_per_node": float((hist > 0).sum(axis=1).mean()),
    }


def render_histogram(dataset: Dataset, partition: Partition) -> Table:
    """A rich Table: one row per node with its sample counts and per-class counts, and a caption."""
    from rich.table import Table

    hist = label_histogram(dataset, partition)
    names = class_names(dataset)
    wide = hist.shape[1] > MAX_CLASS_COLUMNS
    table = Table(
        title=f"{dataset.name}: {partition.info.get('scheme', 'partition')} over "
        f"{partition.n_nodes} nodes"
    )
    table.add_column("node", justify="right")
    table.add_column("train", justify="right")
    if partition.test is not None:
        table.add_column("test", justify="right")
    table.add_column("classes", justify="right")
    if wide:
        table.add_column("top classes (count)")
    else:
        for name in names:
            table.add_column(name, justify="right")
    for node, counts in enumerate(hist):
        row = [str(node), str(int(counts.sum()))]
        if partition.test is not None:
            row.append(str(len(partition.test[node])))
        row.append(str(int((counts > 0).sum())))
        if wide:
            top = np.argsort(-counts, kind="stable")[:3]
            row.append(", ".join(f"{names[c]} ({counts[c]})" for c in top if counts[c] > 0))
        else:
            row += [str(int(c)) if c else "·" for c in counts]
        table.add_row(*row)
    s = summary(dataset, partition)
    table.caption = (
        f"{s['assigned']} of {dataset.n_train} training samples assigned "
        f"({s['unassigned']} unassigned); node sizes {s['min_size']}..{s['max_size']}; "
        f"mean classes per node {s['mean_classes_per_node']:.2f}"
    )
    return table
