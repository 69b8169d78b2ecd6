"""Partitioners: exact partitions, reference shard sizes, skew, determinism, by-user blocks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerlearn.data import Dataset, Partition, make_partition
from peerlearn.data.inspect import label_histogram, render_histogram, summary


def labelled(labels: np.ndarray | list[int], num_classes: int | None = None) -> Dataset:
    """A classification Dataset whose inputs are dummies: partitioners only read the labels."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    k = num_classes or int(y.max()) + 1
    return Dataset(
        name="labels",
        task="classification",
        train_x=torch.zeros(len(y), 1),
        train_y=y,
        test_x=torch.zeros(2, 1),
        test_y=torch.zeros(2, dtype=torch.int64),
        num_classes=k,
        input_shape=(1,),
    )


def ratings_like(n_users: int = 610, seed: int = 0) -> Dataset:
    """A MovieLens-shaped Dataset: every user has 3..30 ratings, shuffled rows."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 31, size=n_users)
    users = np.repeat(np.arange(n_users), counts)
    rng.shuffle(users)
    n_test = len(users) // 3
    x = np.stack([users, rng.integers(0, 50, size=len(users))], axis=1)
    y = rng.integers(1, 11, size=len(users)) / 2
    return Dataset(
        name="movielens",
        task="regression",
        train_x=torch.from_numpy(x[n_test:]),
        train_y=torch.from_numpy(y[n_test:].astype(np.float32)),
        test_x=torch.from_numpy(x[:n_test]),
        test_y=torch.from_numpy(y[:n_test].astype(np.float32)),
        num_classes=None,
        input_shape=(2,),
        info={"n_users": n_users, "n_items": 50},
    )


CIFAR_LABELS = np.repeat(np.arange(10), 5000)


def assert_exact_partition(part: Partition, n: int) -> None:
    allidx = np.concatenate(part.train)
    assert allidx.dtype == np.int64
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


def same(a: Partition, b: Partition) -> bool:
    return len(a.train) == len(b.train) and all(
        np.array_equal(x, y) for x, y in zip(a.train, b.train, strict=True)
    )


# ---------------------------------------------------------------- iid


def test_iid_is_exact_balanced_and_seeded() -> None:
    ds = labelled(np.arange(1003) % 7)
    part = make_partition(ds, "iid", 10, seed=1)
    assert_exact_partition(part, 1003)
    assert part.test is None
    assert part.sizes().tolist() == [101] * 3 + [100] * 7
    assert same(part, make_partition(ds, "iid", 10, seed=1))
    assert not same(part, make_partition(ds, "iid", 10, seed=2))


# ---------------------------------------------------------------- kshard


def reference_kshard(labels: np.ndarray, n_nodes: int, shards: int, seed: int) -> list[list[int]]:
    """A plain-list restatement of the reference algorithm (divshare spec section 6)."""
    pool = sorted(range(len(labels)), key=lambda i: labels[i])
    n = len(labels)
    frac = (n // n_nodes) / n
    sizes = [frac] * n_nodes
    sizes[-1] += 1.0 - frac * n_nodes
    rnd = random.Random(seed)
    out = []
    for s in sizes:
        mine: list[int] = []
        length = int(s * n) // shards
        for _ in range(shards):
            start = rnd.randint(0, len(pool) - 1)
            taken = [pool[(start + j) % len(pool)] for j in range(length)]
            mine += taken
            gone = set(taken)
            pool = [i for i in pool if i not in gone]
        out.append(mine)
    return out


def test_kshard_matches_reference_sizes_on_cifar_shape() -> None:
    ds = labelled(CIFAR_LABELS)
    part = make_partition(ds, "kshard", 60, seed=1234, shards=5)
    sizes = part.sizes()
    assert sizes[:-1].tolist() == [830] * 59 and sizes[-1] == 850
    assert part.info["shard_lens"][:2] == [166, 166] and part.info["shard_lens"][-1] == 170
    allidx = np.concatenate([*part.train, part.info["unassigned"]])
    assert len(allidx) == 50_000 and len(np.unique(allidx)) == 50_000
    assert len(part.info["unassigned"]) == 180
    hist = label_histogram(ds, part)
    classes = (hist > 0).sum(axis=1)
    # 5 shards of 166 sorted samples: each shard spans 1 or 2 classes
    assert classes.max() <= 10 and classes.mean() <= 6.0
    assert (hist.max(axis=1) >= 166).all()  # every node has one class making a whole shard
    # strong skew compared with iid, where every node holds all 10 classes
    iid = label_histogram(ds, make_partition(ds, "iid", 60, seed=1234))
    assert ((iid > 0).sum(axis=1) == 10).all()


@pytest.mark.parametrize(
    ("n", "nodes", "shards", "seed"), [(1000, 7, 3, 0), (503, 10, 2, 5), (120, 4, 5, 9)]
)
def test_kshard_is_the_reference_algorithm(n: int, nodes: int, shards: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=n)
    part = make_partition(labelled(labels, 6), "kshard", nodes, seed=seed, shards=shards)
    expected = reference_kshard(labels, nodes, shards, seed)
    assert [p.tolist() for p in part.train] == expected


def test_kshard_seeded_and_rejects_tiny_shards() -> None:
    ds = labelled(np.arange(400) % 4)
    assert same(make_partition(ds, "kshard", 8, 3), make_partition(ds, "kshard", 8, 3))
    assert not same(make_partition(ds, "kshard", 8, 3), make_partition(ds, "kshard", 8, 4))
    with pytest.raises(ValueError, match="fewer than shards"):
        make_partition(labelled(np.arange(20) % 4), "kshard", 10, 1, shards=3)


# ---------------------------------------------------------------- dirichlet


def test_dirichlet_exact_min_samples_and_seeded() -> None:
    ds = labelled(CIFAR_LABELS[::10])
    part = make_partition(ds, "dirichlet", 20, seed=1, alpha=0.5, min_samples=30)
    assert_exact_partition(part, 5000)
    assert part.sizes().min() >= 30
    assert same(part, make_partition(ds, "dirichlet", 20, seed=1, alpha=0.5, min_samples=30))
    assert not same(part, make_partition(ds, "dirichlet", 20, seed=2, alpha=0.5, min_samples=30))


def test_dirichlet_alpha_controls_skew() -> None:
    ds = labelled(CIFAR_LABELS[::5])  # 10,000 samples, 1,000 per class

    def top_share(alpha: float) -> float:
        hist = label_histogram(ds, make_partition(ds, "dirichlet", 20, seed=3, alpha=alpha))
        return float((hist.max(axis=1) / hist.sum(axis=1)).mean())

    assert top_share(0.05) > 0.6  # a node is dominated by one or two classes
    assert top_share(1000.0) < 0.15  # near uniform: 10 classes at about 10 % each


def test_dirichlet_impossible_min_samples_is_a_clear_error() -> None:
    ds = labelled(np.arange(100) % 10)
    with pytest.raises(ValueError, match="exceeds"):
        make_partition(ds, "dirichlet", 20, 1, min_samples=6)
    with pytest.raises(ValueError, match="no draw in"):
        make_partition(ds, "dirichlet", 20, 1, alpha=0.01, min_samples=5)


# ---------------------------------------------------------------- by_user


def test_by_user_blocks_and_local_tests() -> None:
    ds = ratings_like(610)
    part = make_partition(ds, "by_user", 60, seed=1)
    ranges = part.info["user_ranges"]
    assert [b - a for a, b in ranges] == [11] * 10 + [10] * 50
    assert ranges[0] == (0, 11) and ranges[-1] == (600, 610)
    assert part.test is not None and len(part.test) == 60
    assert_exact_partition(part, ds.n_train)
    test_all = np.concatenate(part.test)
    assert np.array_equal(np.sort(test_all), np.arange(ds.n_test))
    for node, (lo, hi) in enumerate(ranges):
        for x, idx in ((ds.train_x, part.train[node]), (ds.test_x, part.test[node])):
            users = x[torch.from_numpy(idx), 0]
            assert users.min() >= lo and users.max() < hi
    # the seed does not matter: blocks are fixed
    assert same(part, make_partition(ds, "by_user", 60, seed=9))


def test_by_user_errors() -> None:
    with pytest.raises(ValueError, match="only 5 users"):
        make_partition(ratings_like(5), "by_user", 6, 1)
    with pytest.raises(ValueError, match="MovieLens-style"):
        make_partition(labelled(np.arange(10) % 2), "by_user", 2, 1)
    with pytest.raises(ValueError, match="needs class labels"):
        make_partition(ratings_like(20), "kshard", 2, 1)
    assert_exact_partition(make_partition(ratings_like(20), "iid", 4, 1), ratings_like(20).n_train)


# ---------------------------------------------------------------- common errors


def test_empty_node_and_bad_arguments() -> None:
    ds = labelled([0, 1, 0])
    with pytest.raises(ValueError, match="node 3 with no training samples"):
        make_partition(ds, "iid", 4, 1)
    with pytest.raises(ValueError, match="unknown partition scheme 'shards'"):
        make_partition(ds, "shards", 2, 1)
    with pytest.raises(ValueError, match="positive integer"):
        make_partition(ds, "iid", 0, 1)


def test_partitions_identical_in_another_process() -> None:
    """Same arguments in a fresh interpreter (other hash seed) give the same indices."""
    code = (
        "import hashlib, json, numpy as np\n"
        "from test_data_partition import labelled, CIFAR_LABELS\n"
        "from peerlearn.data import make_partition\n"
        "ds = labelled(CIFAR_LABELS[::10])\n"
        "out = {s: hashlib.sha256(np.concatenate(make_partition(ds, s, 13, 7, shards=3)"
        ".train).tobytes()).hexdigest() for s in ('iid', 'kshard', 'dirichlet')}\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")])
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    ds = labelled(CIFAR_LABELS[::10])
    here = {
        s: hashlib.sha256(
            np.concatenate(make_partition(ds, s, 13, 7, shards=3).train).tobytes()
        ).hexdigest()
        for s in ("iid", "kshard", "dirichlet")
    }
    assert json.loads(res.stdout) == here


# ---------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(st.integers(0, 5), min_size=8, max_size=300),
    n_nodes=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    alpha=st.floats(0.3, 50.0),
)
def test_iid_and_dirichlet_always_partition(
    labels: list[int], n_nodes: int, seed: int, alpha: float
) -> None:
    n_nodes = min(n_nodes, len(labels) // 4)
    if n_nodes < 1:
        return
    ds = labelled(labels, 6)
    assert_exact_partition(make_partition(ds, "iid", n_nodes, seed), len(labels))
    try:
        part = make_partition(ds, "dirichlet", n_nodes, seed, alpha=alpha, min_samples=1)
    except ValueError as e:  # allowed only as the documented "no draw" outcome
        assert "no draw in" in str(e)
        return
    assert_exact_partition(part, len(labels))
    assert part.sizes().min() >= 1


# ---------------------------------------------------------------- inspect


def test_histogram_and_table() -> None:
    ds = labelled(CIFAR_LABELS[::50])
    part = make_partition(ds, "kshard", 5, 1, shards=2)
    hist = label_histogram(ds, part)
    assert hist.shape == (5, 10) and hist.sum(axis=1).tolist() == part.sizes().tolist()
    table = render_histogram(ds, part)
    assert table.row_count == 5
    assert "mean classes per node" in str(table.caption)
    s = summary(ds, part)
    assert s["assigned"] + s["unassigned"] == ds.n_train


def test_regression_histogram_uses_stars() -> None:
    ds = ratings_like(12)
    ds.train_y[:6] = torch.tensor([0.5, 1.0, 1.5, 2.5, 4.5, 5.0])
    part = Partition(train=[np.arange(6)], test=None)
    assert label_histogram(ds, part).tolist() == [[2, 1, 1, 0, 2]]
    table = render_histogram(ds, make_partition(ds, "by_user", 3, 1))
    assert table.row_count == 3 and [c.header for c in table.columns][:3] == [
        "node",
        "train",
        "test",
    ]
