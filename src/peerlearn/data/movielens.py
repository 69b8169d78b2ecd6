"""MovieLens ratings as (user, item) -> rating, split 70/30 per user as the reference artifact does.

Users and items are remapped to 0..U-1 and 0..I-1 in ascending order of their original ids (the
artifact numbers items 1..I in the same order; zero-based here). Each user's ratings are split at
random, `round(0.7 * count)` to train, which is what pandas `sample(frac=0.7)` takes. Both splits
are sorted by user, then by position in the source file, so a user's ratings are contiguous.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peerlearn.data.base import Dataset, DatasetNotFound
from peerlearn.data.download import fetch_and_extract

TRAIN_FRACTION = 0.7
DEFAULT_VARIANT = "ml-latest-small"
# variant -> (ratings file, official zip, md5). GroupLens publishes no fixed checksum for
# ml-latest-small (it is a "development" dataset that can be regenerated), so it is not verified.
VARIANTS: dict[str, tuple[str, str, str | None]] = {
    "ml-latest-small": (
        "ratings.csv",
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        None,
    ),
    "ml-100k": (
        "u.data",
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
    ),
}
CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]


def _short(row: Any) -> str:
    text = repr(row)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(path: Path, line: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {what}")


#: user and item ids are stored as int64
MAX_ID = 2**63 - 1


def _checked_rows(path: Path, rows: Any, first_line: int) -> Any:
    """``rows`` numbered from ``first_line``; a line the csv module refuses (a field over its
    size limit, a stray quote) is an error naming the file and line."""
    it = iter(rows)
    line = first_line
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except csv.Error as e:
            raise _bad(path, line, f"unreadable CSV ({e})") from None
        yield line, row
        line += 1


def _parse_rows(path: Path, rows: Any, first_line: int) -> tuple[np.ndarray, ...]:
    users: list[int] = []
    items: list[int] = []
    ratings: list[float] = []
    for line, row in _checked_rows(path, rows, first_line):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != 4:
            raise _bad(
                path, line, f"expected 4 fields (user, item, rating, timestamp), got {_short(row)}"
            )
        try:
            u, i, r = int(row[0]), int(row[1]), float(row[2])
        except ValueError:
            raise _bad(path, line, f"cannot parse user/item/rating from {_short(row)}") from None
        if not 0.5 <= r <= 5.0:
            raise _bad(path, line, f"rating {r} outside 0.5..5")
        for what, v in (("user", u), ("item", i)):
            if not 0 <= v <= MAX_ID:
                shown = str(v) if len(str(v)) <= 30 else str(v)[:27] + "..."
                raise _bad(path, line, f"{what} id {shown} outside 0..{MAX_ID}")
        users.append(u)
        items.append(i)
        ratings.append(r)
    if not users:
        raise ValueError(f"{path}: no ratings found")
    return (
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(ratings, dtype=np.float32),
    )


def read_ratings(path: Path, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, item ids, ratings) in file order; a bad line is an error naming file and line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if variant == "ml-100k":
                return _parse_rows(path, csv.reader(f, delimiter="\t"), 1)
            reader = csv.reader(f)
            header = next(reader, None)
            if header != CSV_HEADER:
                raise _bad(path, 1, f"expected header {','.join(CSV_HEADER)}, found {header!r}")
            return _parse_rows(path, reader, 2)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text ratings file ({e})") from e


def split_per_user(
    users: np.ndarray, seed: int, fraction: float = TRAIN_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of train and test: per user, a seeded random `round(fraction * n)` go to train.

    `users` are zero-based ids; users are visited in ascending id order with one Generator, so the
    split depends only on the seed and the file. Python's round (half to even) matches pandas.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(int(users.max()) + 2))
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for u in range(len(bounds) - 1):
        rows = order[bounds[u] : bounds[u + 1]]
        if rows.size == 0:
            continue
        take = np.zeros(rows.size, dtype=bool)
        take[rng.permutation(rows.size)[: round(fraction * rows.size)]] = True
        train.append(rows[take])
        test.append(rows[~take])
    return np.concatenate(train), np.concatenate(test)


def candidates(roots: list[Path], variant: str) -> list[Path]:
    fname = VARIANTS[variant][0]
    return [p for r in roots for p in (r / "movielens" / variant / fname, r / variant / fname)]


def find(roots: list[Path], variant: str, download: bool) -> Path:
    tried = candidates(roots, variant)
    for path in tried:
        if path.is_file():
            return path
    fname, url, md5 = VARIANTS[variant]
    error = None
    if download:
        target = roots[0] / "movielens"
        try:
            fetch_and_extract(url, target, md5)
            if (target / variant / fname).is_file():
                return target / variant / fname
            error = f"the archive from {url} did not contain {variant}/{fname}"
        except Exception as e:  # network, disk, checksum: all end in the same advice
            error = f"{type(e).__name__}: {e}"
    raise DatasetNotFound.build(
        f"movielens/{variant}", tried, f"movielens/{variant}/{fname}", error
    )


def load(
    roots: list[Path], variant: str | None = None, seed: int = 1, download: bool = True
) -> Dataset:
    variant = variant or DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"movielens: unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    path = find(roots, variant, download)
    raw_users, raw_items, ratings = read_ratings(path, variant)
    user_ids, users = np.unique(raw_users, return_inverse=True)
    item_ids, items = np.unique(raw_items, return_inverse=True)
    pairs = np.stack([users, items], axis=1).astype(np.int64)
    tr, te = split_per_user(users, seed)
    return Dataset(
        name="movielens",
        task="regression",
        train_x=torch.from_numpy(pairs[tr]),
        train_y=torch.from_numpy(ratings[tr]),
        test_x=torch.from_numpy(pairs[te]),
        test_y=torch.from_numpy(ratings[te]),
        num_classes=None,
        input_shape=(2,),
        info={
            "variant": variant,
            "n_users": len(user_ids),
            "n_items": len(item_ids),
            "n_ratings": len(ratings),
            "source": str(path),
            "split_seed": seed,
        },
    )
