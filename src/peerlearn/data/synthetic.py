"""Seeded Gaussian blobs: a tiny, learnable classification task for tests and smoke runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from peerlearn.data.base import Dataset

DEFAULTS: dict[str, Any] = {
    "n_train": 600,
    "n_test": 200,
    "n_features": 16,
    "n_classes": 4,
    # Spread of the class centres relative to the unit noise: 1.0 gives a task that is
    # learnable in a few steps but not solved by the first one.
    "separation": 1.0,
}


def _params(synthetic: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(DEFAULTS)
    for key, value in (synthetic or {}).items():
        if key not in DEFAULTS:
            raise ValueError(
                f"synthetic dataset: unknown parameter {key!r}; allowed: {', '.join(DEFAULTS)}"
            )
        params[key] = value
    for key in ("n_train", "n_test", "n_features", "n_classes"):
        if not isinstance(params[key], int) or params[key] < 1:
            raise ValueError(
                f"synthetic dataset: {key} must be a positive integer, not {params[key]!r}"
            )
    if params["n_classes"] < 2:
        raise ValueError("synthetic dataset: n_classes must be at least 2")
    if float(params["separation"]) <= 0:
        raise ValueError("synthetic dataset: separation must be positive")
    return params


def _draw(
    rng: np.random.Generator, centres: np.ndarray, n: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    # Balanced labels (class sizes differ by at most one), in random order.
    y = rng.permutation(np.arange(n, dtype=np.int64) % n_classes)
    x = centres[y] + rng.standard_normal((n, centres.shape[1]))
    return x.astype(np.float32), y


def load(seed: int = 1, synthetic: dict[str, Any] | None = None) -> Dataset:
    """Deterministic from `seed` and the parameters alone (its own numpy Generator)."""
    p = _params(synthetic)
    rng = np.random.default_rng([seed, 0x5EED])
    k, d = p["n_classes"], p["n_features"]
    centres = rng.standard_normal((k, d)) * float(p["separation"]) * np.sqrt(2.0)
    x_tr, y_tr = _draw(rng, centres, p["n_train"], k)
    x_te, y_te = _draw(rng, centres, p["n_test"], k)
    return Dataset(
        name="synthetic",
        task="classification",
        train_x=torch.from_numpy(x_tr),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(x_te),
        test_y=torch.from_numpy(y_te),
        num_classes=k,
        input_shape=(d,),
        info={"source": "gaussian blobs", "seed": seed, **p},
    )
