"""One entry point for every dataset, so configs name a dataset and never a loader.

The built-in datasets are registered here (``peerlearn.components.DATASETS``); their modules are
imported only when one is loaded. A loader is called as
``loader(root=, variant=, seed=, download=, options=)`` (``options``: ``[data.synthetic]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peerlearn.components import DATASETS, register_dataset
from peerlearn.data.base import Dataset
from peerlearn.data.roots import data_roots
from peerlearn.registry import resolve

__all__ = ["DATASETS", "load_dataset"]


def _digits(**_: Any) -> Dataset:
    from peerlearn.data import digits

    return digits.load()


def _synthetic(*, seed: int, options: dict[str, Any] | None, **_: Any) -> Dataset:
    from peerlearn.data import synthetic as synth

    return synth.load(seed=seed, synthetic=options)


def _cifar10(*, root: str | Path | None, download: bool, **_: Any) -> Dataset:
    from peerlearn.data import cifar10

    return cifar10.load(data_roots(root), download=download)


def _fashion_mnist(*, root: str | Path | None, download: bool, **_: Any) -> Dataset:
    from peerlearn.data import fashion_mnist

    return fashion_mnist.load(data_roots(root), download=download)


def _movielens(
    *, root: str | Path | None, variant: str | None, seed: int, download: bool, **_: Any
) -> Dataset:
    from peerlearn.data import movielens

    return movielens.load(data_roots(root), variant=variant, seed=seed, download=download)


register_dataset(
    "digits",
    _digits,
    kind="vector",
    footprint=(1797, (64,), 10),
    description="scikit-learn 8x8 digits, 10 classes, 1,437/360 (bundled, no download)",
)
register_dataset(
    "synthetic",
    _synthetic,
    kind="vector",
    description="seeded Gaussian blobs for tests (sizes set by [data.synthetic])",
)
register_dataset(
    "cifar10",
    _cifar10,
    kind="image",
    aliases=("cifar-10",),
    footprint=(60_000, (3, 32, 32), 10),
    description="CIFAR-10, 32x32 colour images, 10 classes, 50,000/10,000",
)
register_dataset(
    "fashion_mnist",
    _fashion_mnist,
    kind="image",
    aliases=("fashion-mnist", "fmnist"),
    footprint=(70_000, (1, 28, 28), 10),
    description="Fashion-MNIST, 28x28 grey clothing images, 10 classes, 60,000/10,000",
)
register_dataset(
    "movielens",
    _movielens,
    kind="ratings",
    variants=("ml-latest-small", "ml-100k"),
    footprint=(100_836, (2,), None),  # ml-latest-small; ml-100k has 100,000
    description="MovieLens ratings (ml-latest-small or ml-100k), 70/30 per user, regression",
)


def _canonical(name: str) -> str:
    key = name.lower()
    for entry in DATASETS.entries():
        if key == entry.name.lower() or key in entry.aliases:
            return entry.name
    return name


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    variant: str | None = None,
    seed: int = 1,
    download: bool = True,
    synthetic: dict[str, Any] | None = None,
) -> Dataset:
    """Load `name` from the data roots (see `data_roots`), downloading into the first if allowed.

    `seed` matters only where the dataset itself is random: synthetic (the draw) and movielens (the
    per-user train/test split). `variant` only for datasets that have variants; `synthetic` is
    the options of the synthetic dataset (ignored elsewhere).
    """
    key = _canonical(name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    entry = DATASETS.get(key)
    if variant is not None and entry.variants is None:
        raise ValueError(f"dataset {key!r} has no variants (got variant={variant!r})")
    dataset = resolve(entry.loader)(
        root=root, variant=variant, seed=seed, download=download, options=synthetic
    )
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"dataset {key!r}: its loader returned {type(dataset).__name__}, not a "
            "peerlearn.data.base.Dataset"
        )
    return dataset
