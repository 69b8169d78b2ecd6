"""Fashion-MNIST from its IDX files, parsed with numpy (gzipped or not)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from peerlearn.data.base import Dataset, DatasetNotFound
from peerlearn.data.download import fetch

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Official md5s of the upstream .gz files (the zalandoresearch README; torchvision uses the same).
# Repackaged copies (e.g. Debian's, recompressed) have other md5s but identical content: local files
# are therefore not md5-checked, only structurally (magic number, dimensions, size).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
FOLDERS = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
LAYOUT = "fashion-mnist/ with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*.gz"
MEAN = 0.2860
STD = 0.3530
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_MAGIC = 0x803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x801  # unsigned byte, 1 dimension


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array of unsigned bytes; checks the magic number, dimensions and exact size."""
    buf = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: only {len(buf)} bytes, shorter than the IDX header")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(buf) != expected:
        raise ValueError(
            f"{path}: {len(buf)} bytes but the header's dimensions {dims} need {expected}"
            " (truncated or corrupt file)"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _locate(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def candidates(roots: list[Path]) -> list[Path]:
    return [r / f for r in roots for f in FOLDERS]


def find(roots: list[Path], download: bool) -> dict[str, Path]:
    """Paths of the four files in the first folder that has all of them; else download them."""
    tried = candidates(roots)
    for folder in tried:
        found = {stem: _locate(folder, stem) for stem in FILES}
        if all(found.values()):
            return {k: v for k, v in found.items() if v is not None}
    error = None
    if download:
        target = roots[0] / FOLDERS[0]
        try:
            return {
                stem: fetch(BASE_URL + f"{stem}.gz", target / f"{stem}.gz", md5)
                for stem, md5 in FILES.items()
            }
        except Exception as e:  # network, disk, checksum: all end in the same advice
            error = f"{type(e).__name__}: {e}"
    raise DatasetNotFound.build("fashion_mnist", tried, LAYOUT, error)


def _split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be in 0..9, found {labels.max()}")
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()).to(torch.float32)
    x = x.div_(255.0).sub_(MEAN).div_(STD)
    return x, torch.from_numpy(labels.astype(np.int64))


def load(roots: list[Path], download: bool = True) -> Dataset:
    paths = find(roots, download)
    train_x, train_y = _split(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"])
    test_x, test_y = _split(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"])
    return Dataset(
        name="fashion_mnist",
        task="classification",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        input_shape=(1, 28, 28),
        info={
            "source": str(paths["train-images-idx3-ubyte"].parent),
            "classes": CLASSES,
            "normalize": (MEAN, STD),
        },
    )
