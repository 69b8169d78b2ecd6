"""CIFAR-10 from the official python batches (`cifar-10-batches-py/`).

The official format is a set of pickles. Pickle can run code while loading, so this module only
reads files found on the user's own data roots (or downloaded with a verified md5), and it unpickles
through an allow-list that accepts nothing but the numpy array reconstruction the official files
(and `build_batches.py`-style copies) use.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peerlearn.data.base import Dataset, DatasetNotFound
from peerlearn.data.download import fetch_and_extract

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
LAYOUT = f"cifar10/{BATCHES_DIR}/ (data_batch_1..5, test_batch)"
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# ToTensor then Normalize(0.5, 0.5) per channel, as the reference artifact does.
MEAN = 0.5
STD = 0.5


#: the largest array a batch pickle may hold (an official batch's data is 30.7 MB)
MAX_ARRAY_BYTES = 1 << 30


def _checked_array(shape: Any, dtype: Any, raw: Any, fortran: bool = False) -> np.ndarray:
    """An array from pickled (shape, dtype, raw bytes), checked before anything is allocated:
    a plain numeric dtype, a shape whose size matches the bytes, at most MAX_ARRAY_BYTES."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.itemsize == 0:
        raise pickle.UnpicklingError(f"array dtype {dtype!r} is not a plain numeric type")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and 0 <= d <= MAX_ARRAY_BYTES for d in shape
    ):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    nbytes = 1
    for d in shape:
        nbytes *= d
    nbytes *= dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(
            f"array of shape {shape} ({nbytes:,} bytes) is larger than {MAX_ARRAY_BYTES:,} bytes"
        )
    if not isinstance(raw, bytes | bytearray) or len(raw) != nbytes:
        size = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise pickle.UnpicklingError(f"array of shape {shape} needs {nbytes} bytes, found {size}")
    flat = np.frombuffer(bytes(raw), dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


class _PendingArray:
    """What the allow-listed ``_reconstruct`` returns: the real array is made by
    ``__setstate__`` (pickle's BUILD) only once its shape, dtype and data size are checked."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _checked_array(shape, dtype, raw, bool(fortran))


def _reconstruct(subtype: Any, *_: Any) -> _PendingArray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    return _PendingArray()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str = "C") -> np.ndarray:
    return _checked_array(tuple(shape), dtype, buf, order == "F")


def _resolve(obj: Any) -> Any:
    """The unpickled object with every pending array replaced by the array it made."""
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise pickle.UnpicklingError("an array without its data")
        return obj.array
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    return obj


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch pickle may reference, under every module name numpy used."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    import codecs

    allowed[("_codecs", "encode")] = (
        codecs.encode
    )  # protocol-2 pickles of bytes written by Python 3
    # numpy's own reconstructors would allocate whatever shape the file names: checked stand-ins
    for core in ("numpy._core", "numpy.core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch file"
            ) from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as uint8 (n, 3, 32, 32) and int64 (n,); anything odd is an error naming it."""
    try:
        with open(path, "rb") as f:
            entry = _resolve(_BatchUnpickler(f, encoding="bytes").load())
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        MemoryError,
    ) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch pickle ({e})") from e
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a dict, found {type(entry).__name__}")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"labels", entry.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: missing b'data' or b'labels' (keys: {sorted(map(str, entry))})")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (n, 3072), found {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    # Rows hold 1024 R, then 1024 G, then 1024 B values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE))


def candidates(roots: list[Path]) -> list[Path]:
    return [p for r in roots for p in (r / "cifar10" / BATCHES_DIR, r / BATCHES_DIR)]


def find(roots: list[Path], download: bool) -> Path:
    """The first complete batch folder on the roots; else download into the first root."""
    tried = candidates(roots)
    for folder in tried:
        if _complete(folder):
            return folder
    error = None
    if download:
        target = roots[0] / "cifar10"
        try:
            fetch_and_extract(URL, target, MD5)
            if _complete(target / BATCHES_DIR):
                return target / BATCHES_DIR
            error = f"the archive from {URL} did not contain {BATCHES_DIR}/ with all batches"
        except Exception as e:  # network, disk, checksum: all end in the same advice
            error = f"{type(e).__name__}: {e}"
    raise DatasetNotFound.build("cifar10", tried, LAYOUT, error)


def _normalize(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD)


def load(roots: list[Path], download: bool = True) -> Dataset:
    folder = find(roots, download)
    parts = [_read_batch(folder / name) for name in TRAIN_FILES]
    train_img = np.concatenate([p[0] for p in parts])
    train_lab = np.concatenate([p[1] for p in parts])
    test_img, test_lab = _read_batch(folder / TEST_FILE)
    return Dataset(
        name="cifar10",
        task="classification",
        train_x=_normalize(train_img),
        train_y=torch.from_numpy(train_lab),
        test_x=_normalize(test_img),
        test_y=torch.from_numpy(test_lab),
        num_classes=10,
        input_shape=(3, 32, 32),
        info={"source": str(folder), "classes": CLASSES, "normalize": (MEAN, STD)},
    )
