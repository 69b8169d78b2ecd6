"""One entry point for every dataset, so configs name a dataset and never a loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peerlearn.data.base import Dataset
from peerlearn.data.roots import data_roots

DATASETS: dict[str, str] = {
    "digits": "scikit-learn 8x8 digits, 10 classes, 1,437/360 (bundled, no download)",
    "synthetic": "seeded Gaussian blobs for tests (sizes set by [data.synthetic])",
    "cifar10": "CIFAR-10, 32x32 colour images, 10 classes, 50,000/10,000",
    "fashion_mnist": "Fashion-MNIST, 28x28 grey clothing images, 10 classes, 60,000/10,000",
    "movielens": "MovieLens ratings (ml-latest-small or ml-100k), 70/30 per user, regression",
}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10"}


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
    per-user train/test split). `variant` is for movielens only; `synthetic` is ignored elsewhere.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    if variant is not None and key != "movielens":
        raise ValueError(f"dataset {key!r} has no variants (got variant={variant!r})")
    if key == "digits":
        from peerlearn.data import digits

        return digits.load()
    if key == "synthetic":
        from peerlearn.data import synthetic as synth

        return synth.load(seed=seed, synthetic=synthetic)
    roots = data_roots(root)
    if key == "cifar10":
        from peerlearn.data import cifar10

        return cifar10.load(roots, download=download)
    if key == "fashion_mnist":
        from peerlearn.data import fashion_mnist

        return fashion_mnist.load(roots, download=download)
    from peerlearn.data import movielens

    return movielens.load(roots, variant=variant, seed=seed, download=download)
