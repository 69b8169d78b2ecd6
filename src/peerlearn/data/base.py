"""The dataset record every loader returns, and the error raised when data is missing.

A `Dataset` is plain tensors in memory: every node of a simulated run indexes the same tensors, so a
partition is just index arrays (see `partition.py`) and nothing is copied per node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

Task = Literal["classification", "regression"]


@dataclass(eq=False)
class Dataset:
    """A whole dataset, train and test, already decoded and normalized.

    Classification: `train_x` is float32 (N, *input_shape), `train_y` int64 labels in
    [0, num_classes). MovieLens (regression): `train_x` is int64 (N, 2) = [user, item], zero-based,
    `train_y` float32 ratings.
    """

    name: str
    task: Task
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int | None
    input_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Catch a loader bug here rather than as a shape error deep inside batched training.
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"dataset {self.name!r}: {split} has {x.shape[0]} inputs "
                    f"but {y.shape[0]} targets"
                )
            if tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"dataset {self.name!r}: {split} inputs have shape {tuple(x.shape[1:])}, "
                    f"expected {self.input_shape}"
                )
        if (self.task == "classification") != (self.num_classes is not None):
            raise ValueError(f"dataset {self.name!r}: num_classes must be set iff classification")

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, n_train={self.n_train}, "
            f"n_test={self.n_test}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape})"
        )


class DatasetNotFound(Exception):
    """The dataset is on none of the data roots and could not be downloaded."""

    @classmethod
    def build(
        cls,
        name: str,
        tried: Iterable[Path],
        layout: str,
        download_error: str | None = None,
    ) -> DatasetNotFound:
        """Make the message users need: every path looked at, and how to provide the data."""
        lines = [f"dataset {name!r} not found. Looked in:"]
        lines += [f"  - {p}" for p in tried]
        if download_error is None:
            lines.append("Download was disabled (download=False).")
        else:
            lines.append(f"Download failed: {download_error}")
        lines.append(
            "To provide it, set data.root in the config, or the PEERLEARN_DATA environment "
            f"variable (folders separated by {os.pathsep!r}), to a folder containing {layout}."
        )
        return cls("\n".join(lines))
