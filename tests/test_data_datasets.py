"""Dataset loaders, data roots and checked downloads, all offline (tiny fakes in tmp_path)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from peerlearn.data import DATASETS, DatasetNotFound, data_roots, load_dataset
from peerlearn.data import cifar10 as cifar_mod
from peerlearn.data import fashion_mnist as fmnist_mod
from peerlearn.data import movielens as ml_mod
from peerlearn.data.download import ChecksumError, extract_tar, extract_zip, fetch

SHARED = os.environ.get("PEERLEARN_TEST_SHARED_DATA")
needs_shared = pytest.mark.skipif(
    not SHARED, reason="set PEERLEARN_TEST_SHARED_DATA to a folder like /work/shared/data"
)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- registry, digits, synthetic


def test_registry_lists_datasets_and_rejects_unknown_names() -> None:
    assert set(DATASETS) == {"digits", "synthetic", "cifar10", "fashion_mnist", "movielens"}
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*cifar10.*digits"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="no variants"):
        load_dataset("digits", variant="ml-100k")


def test_digits_shapes_and_normalization() -> None:
    ds = load_dataset("digits")
    assert ds.task == "classification" and ds.num_classes == 10 and ds.input_shape == (64,)
    assert ds.train_x.shape == (1437, 64) and ds.test_x.shape == (360, 64)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    mean, std = ds.train_x.mean(0), ds.train_x.std(0, unbiased=False)
    assert mean.abs().max() < 1e-5
    # standardized features have std 1; pixels that are always 0 in train stay at 0
    assert torch.all(((std - 1).abs() < 1e-4) | (std < 1e-6))
    # stratified split: every class has 35..37 test samples
    counts = torch.bincount(ds.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # the split does not depend on the run seed
    assert torch.equal(load_dataset("digits", seed=7).train_y, ds.train_y)


def test_synthetic_is_deterministic_from_seed() -> None:
    a = load_dataset("synthetic", seed=3)
    assert a.train_x.shape == (600, 16) and a.test_x.shape == (200, 16)
    assert a.num_classes == 4 and a.input_shape == (16,)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert torch.bincount(a.train_y).tolist() == [150] * 4
    b = load_dataset("synthetic", seed=3)
    c = load_dataset("synthetic", seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    small = load_dataset(
        "synthetic", synthetic={"n_train": 30, "n_test": 10, "n_features": 3, "n_classes": 3}
    )
    assert small.train_x.shape == (30, 3) and small.num_classes == 3
    with pytest.raises(ValueError, match="unknown parameter 'n_nodes'"):
        load_dataset("synthetic", synthetic={"n_nodes": 3})


# ---------------------------------------------------------------- roots


def test_data_roots_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    monkeypatch.setenv("PEERLEARN_DATA", os.pathsep.join([str(a), "", str(b)]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(c))
    assert data_roots(tmp_path / "cfg") == [tmp_path / "cfg"]  # config wins
    assert data_roots(f"{a}{os.pathsep}{c}") == [a, c]  # a config string may list folders
    assert data_roots(None) == [a, b]  # then the env list, in order, empty entries skipped
    monkeypatch.setenv("PEERLEARN_DATA", "")
    assert data_roots(None) == [c / "peerlearn"]  # then the cache
    monkeypatch.delenv("PEERLEARN_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_roots() == [tmp_path / "home" / ".cache" / "peerlearn"]


# ---------------------------------------------------------------- download


def test_fetch_file_url_checks_md5(tmp_path: Path) -> None:
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(b"peerlearn" * 1000)
    good = _md5(src)
    out = tmp_path / "out"
    out.mkdir()

    got = fetch(src.as_uri(), out / "x.bin", good)
    assert got == out / "x.bin" and got.read_bytes() == src.read_bytes()
    # a folder destination keeps the URL's file name
    assert fetch(src.as_uri(), out, good) == out / "blob.bin"

    with pytest.raises(ChecksumError, match="md5 mismatch"):
        fetch(src.as_uri(), out / "bad.bin", "0" * 32)
    assert not (out / "bad.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == ["blob.bin", "x.bin"]  # no temp file left


def test_fetch_missing_url_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        fetch((tmp_path / "nope.bin").as_uri(), tmp_path / "y.bin", None)
    assert list(tmp_path.iterdir()) == []


def test_extraction_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="unsafe member"):
        extract_zip(evil_zip, tmp_path / "out")
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises((ValueError, tarfile.TarError)):
        extract_tar(evil_tar, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


# ---------------------------------------------------------------- cifar10 fakes


def _cifar_batch(n: int, label_offset: int, rng: np.random.Generator) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {
        b"batch_label": b"fake",
        b"labels": [(label_offset + i) % 10 for i in range(n)],
        b"data": data,
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def _write_cifar(folder: Path, n: int = 4, protocol: int = 2) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([*cifar_mod.TRAIN_FILES, cifar_mod.TEST_FILE]):
        batches[name] = _cifar_batch(n, i, rng)
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=protocol)
    return batches


@pytest.mark.parametrize("layout", ["cifar10/cifar-10-batches-py", "cifar-10-batches-py"])
def test_cifar10_loads_official_layout(tmp_path: Path, layout: str) -> None:
    batches = _write_cifar(tmp_path / layout)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    # labels in batch order; pixels: ToTensor then (x - 0.5) / 0.5, rows are R, G, B planes
    assert ds.train_y[:4].tolist() == [0, 1, 2, 3] and ds.train_y[4:8].tolist() == [1, 2, 3, 4]
    raw = batches["data_batch_2"][b"data"][1]
    expect = torch.from_numpy(raw.reshape(3, 32, 32).astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(ds.train_x[5], expect, atol=1e-6)
    assert ds.train_x.min() >= -1 and ds.train_x.max() <= 1


def test_cifar10_reads_modern_pickle_protocol(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", protocol=pickle.HIGHEST_PROTOCOL)
    assert load_dataset("cifar10", tmp_path, download=False).n_train == 20


def test_cifar10_missing_names_every_path(tmp_path: Path) -> None:
    roots = f"{tmp_path / 'r1'}{os.pathsep}{tmp_path / 'r2'}"
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("cifar10", roots, download=False)
    msg = str(err.value)
    for root in ("r1", "r2"):
        assert str(tmp_path / root / "cifar10" / "cifar-10-batches-py") in msg
        assert str(tmp_path / root / "cifar-10-batches-py") in msg
    assert "PEERLEARN_DATA" in msg and "data.root" in msg


def test_cifar10_rejects_bad_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _write_cifar(folder)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_3.*\(n, 3072\)"):
        load_dataset("cifar10", tmp_path, download=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_3.*not allowed"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar10_download_from_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "staging"
    _write_cifar(staging / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar_mod, "URL", archive.as_uri())

    monkeypatch.setattr(cifar_mod, "MD5", "0" * 32)
    with pytest.raises(DatasetNotFound, match="md5 mismatch"):
        load_dataset("cifar10", tmp_path / "root")

    # an incomplete folder where the download goes is replaced, not merged
    partial = tmp_path / "root" / "cifar10" / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    (partial / "data_batch_1").write_bytes(b"junk")
    monkeypatch.setattr(cifar_mod, "MD5", _md5(archive))
    ds = load_dataset("cifar10", tmp_path / "root")
    assert ds.n_train == 20
    folder = tmp_path / "root" / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"]  # archive dropped


# ---------------------------------------------------------------- fashion-mnist fakes


def _idx(magic: int, dims: tuple[int, ...], data: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + data.tobytes()


def _write_fmnist(folder: Path, gz: bool = True, n_train: int = 6, n_test: int = 3) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        arrays[prefix] = (images, labels)
        for stem, blob in (
            (f"{prefix}-images-idx3-ubyte", _idx(0x803, (n, 28, 28), images)),
            (f"{prefix}-labels-idx1-ubyte", _idx(0x801, (n,), labels)),
        ):
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / stem).write_bytes(blob)
    return arrays


@pytest.mark.parametrize(("folder", "gz"), [("fashion-mnist", True), ("fashion_mnist", False)])
def test_fashion_mnist_loads_idx(tmp_path: Path, folder: str, gz: bool) -> None:
    arrays = _write_fmnist(tmp_path / folder, gz=gz)
    ds = load_dataset("fashion_mnist", tmp_path, download=False)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == arrays["train"][1].tolist()
    expect = (torch.from_numpy(arrays["t10k"][0].astype(np.float32)) / 255 - 0.2860) / 0.3530
    assert torch.allclose(ds.test_x[:, 0], expect, atol=1e-5)


def test_fashion_mnist_corrupt_files_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    _write_fmnist(folder)
    target = folder / "train-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(_idx(0x803, (6,), np.zeros(6, np.uint8))))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*magic"):
        load_dataset("fashion_mnist", tmp_path, download=False)
    target.write_bytes(gzip.compress(_idx(0x801, (9,), np.zeros(6, np.uint8))))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*truncated"):
        load_dataset("fashion_mnist", tmp_path, download=False)
    target.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*cannot read"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_fashion_mnist_missing_names_every_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert str(tmp_path / "fashion-mnist") in str(err.value)
    assert str(tmp_path / "fashion_mnist") in str(err.value)


def test_fashion_mnist_download_from_file_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    _write_fmnist(mirror)
    md5s = {stem: _md5(mirror / f"{stem}.gz") for stem in fmnist_mod.FILES}
    monkeypatch.setattr(fmnist_mod, "BASE_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(fmnist_mod, "FILES", md5s)
    ds = load_dataset("fashion_mnist", tmp_path / "root")
    assert ds.n_train == 6
    assert (tmp_path / "root" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


# ---------------------------------------------------------------- movielens fakes


ITEMS = [3, 7, 42, 100, 250, 999, 1000, 5000, 6, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


def _ratings_rows() -> list[tuple[int, int, float, int]]:
    """Users 9, 2, 5 (out of order) with 20, 7 and 3 ratings on sparse item ids."""
    rng = np.random.default_rng(5)
    rows = []
    for user, count in ((9, 20), (2, 7), (5, 3)):
        for item in rng.choice(ITEMS, size=count, replace=False):
            rows.append((user, int(item), float(rng.integers(1, 11)) / 2, 964982703))
    return rows


def _write_csv(path: Path, rows: list, header: str = "userId,movieId,rating,timestamp") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{u},{i},{r},{t}" for u, i, r, t in rows]
    path.write_text("\n".join(lines) + "\n")


def test_movielens_remaps_ids_and_splits_per_user(tmp_path: Path) -> None:
    rows = _ratings_rows()
    _write_csv(tmp_path / "movielens" / "ml-latest-small" / "ratings.csv", rows)
    ds = load_dataset("movielens", tmp_path, download=False, seed=3)
    assert ds.task == "regression" and ds.num_classes is None and ds.input_shape == (2,)
    assert ds.train_x.dtype == torch.int64 and ds.train_y.dtype == torch.float32
    users = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    assert ds.info["n_users"] == 3 and ds.info["n_items"] == len(items)
    assert ds.info["variant"] == "ml-latest-small"

    # every rating lands in exactly one split, with ids mapped back to the original ones
    def triples(x: torch.Tensor, y: torch.Tensor) -> list:
        pairs = zip(x.tolist(), y.tolist(), strict=True)
        return [(users[u], items[i], float(r)) for (u, i), r in pairs]

    got = triples(ds.train_x, ds.train_y) + triples(ds.test_x, ds.test_y)
    assert sorted(got) == sorted((u, i, r) for u, i, r, _ in rows)
    # per user, round(0.7 * count) to train: 20 -> 14, 7 -> 5, 3 -> 2
    assert torch.bincount(ds.train_x[:, 0], minlength=3).tolist() == [5, 2, 14]
    assert torch.bincount(ds.test_x[:, 0], minlength=3).tolist() == [2, 1, 6]
    # sorted by user so a user's ratings are contiguous
    assert torch.all(ds.train_x[1:, 0] >= ds.train_x[:-1, 0])

    again = load_dataset("movielens", tmp_path, download=False, seed=3)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    other = load_dataset("movielens", tmp_path, download=False, seed=4)
    assert not torch.equal(other.train_x, ds.train_x)


def test_movielens_100k_tab_format(tmp_path: Path) -> None:
    rows = _ratings_rows()
    path = tmp_path / "ml-100k" / "u.data"
    path.parent.mkdir()
    path.write_text("".join(f"{u}\t{i}\t{int(r + 0.5)}\t{t}\n" for u, i, r, t in rows))
    ds = load_dataset("movielens", tmp_path, variant="ml-100k", download=False)
    assert ds.info["variant"] == "ml-100k" and ds.info["n_users"] == 3
    assert ds.n_train + ds.n_test == len(rows)


def test_movielens_malformed_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "ml-latest-small" / "ratings.csv"
    _write_csv(path, _ratings_rows(), header="user,movie,rating,ts")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 1: expected header"):
        load_dataset("movielens", tmp_path, download=False)
    _write_csv(path, [(1, 2, 3.0, 4), (1, 3, 9.0, 4)])
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3: rating 9.0"):
        load_dataset("movielens", tmp_path, download=False)
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.0,4\n1,x,3.0,4\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3: cannot parse"):
        load_dataset("movielens", tmp_path, download=False)
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.0\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 2: expected 4 fields"):
        load_dataset("movielens", tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown variant"):
        load_dataset("movielens", tmp_path, variant="ml-1m", download=False)


def test_movielens_missing_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("movielens", tmp_path / "root", download=False)
    assert str(tmp_path / "root" / "movielens" / "ml-latest-small" / "ratings.csv") in str(
        err.value
    )

    buf = io.StringIO()
    buf.write("userId,movieId,rating,timestamp\n")
    buf.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in _ratings_rows())
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", buf.getvalue())
    fname, _, md5 = ml_mod.VARIANTS["ml-latest-small"]
    monkeypatch.setitem(ml_mod.VARIANTS, "ml-latest-small", (fname, archive.as_uri(), md5))
    ds = load_dataset("movielens", tmp_path / "root")
    assert ds.info["n_users"] == 3
    assert (tmp_path / "root" / "movielens" / "ml-latest-small" / "ratings.csv").is_file()


# ---------------------------------------------------------------- the real data, when present


@needs_shared
def test_real_movielens_latest_small() -> None:
    ds = load_dataset("movielens", SHARED, download=False)
    assert (ds.info["n_users"], ds.info["n_items"]) == (610, 9724)
    assert ds.n_train + ds.n_test == 100_836
    assert int(ds.train_x[:, 0].max()) == 609 and int(ds.train_x[:, 1].max()) <= 9723


@needs_shared
def test_real_movielens_100k() -> None:
    ds = load_dataset("movielens", SHARED, variant="ml-100k", download=False)
    assert (ds.info["n_users"], ds.info["n_items"]) == (943, 1682)
    assert ds.n_train + ds.n_test == 100_000


@needs_shared
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion_mnist", SHARED, download=False)
    assert ds.n_train == 60_000 and ds.n_test == 10_000
    assert ds.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert abs(ds.train_x.mean().item()) < 1e-3 and abs(ds.train_x.std().item() - 1) < 1e-3
