"""scikit-learn's bundled 8x8 digits: a real image task with no download (quickstart, tests)."""

from __future__ import annotations

import numpy as np
import torch

from peerlearn.data.base import Dataset

TEST_SIZE = 360
# Fixed, not the run seed: the train/test split is part of the dataset's definition, so results
# under different run seeds stay comparable.
SPLIT_SEED = 0


def load() -> Dataset:
    """1,437 train / 360 test, stratified; pixels scaled to [0, 1] then standardized per feature."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std < 1e-8] = 1.0  # some border pixels are always 0 in the training set
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    return Dataset(
        name="digits",
        task="classification",
        train_x=torch.from_numpy(x_tr.astype(np.float32)),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(x_te.astype(np.float32)),
        test_y=torch.from_numpy(y_te),
        num_classes=10,
        input_shape=(64,),
        info={"source": "sklearn.datasets.load_digits", "split_seed": SPLIT_SEED},
    )
