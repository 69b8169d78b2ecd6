"""Who holds which samples: index arrays per node, from the seed alone.

Every process of a run (simulated or deployed) calls `make_partition` with the same arguments and
must get the same answer, so all randomness comes from generators seeded with `seed` only, never
from global random state. Order of indices inside a node carries no meaning; trainers shuffle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peerlearn.components import PARTITIONERS, register_partitioner
from peerlearn.data.base import Dataset
from peerlearn.registry import resolve

#: the partitioners, by name (built-ins registered at the end of this module)
SCHEMES = PARTITIONERS
DIRICHLET_MAX_TRIES = 1000


@dataclass(eq=False)
class Partition:
    """Per node, indices into `dataset.train_x` (and into `dataset.test_x` when tests are local).

    `test is None` means all nodes evaluate on the shared test set. `info` carries scheme details,
    e.g. `unassigned` (kshard's leftover samples) or `user_ranges` (by_user).
    """

    train: list[np.ndarray]
    test: list[np.ndarray] | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        return len(self.train)

    def sizes(self) -> np.ndarray:
        return np.array([len(t) for t in self.train], dtype=np.int64)


def make_partition(
    dataset: Dataset,
    scheme: str,
    n_nodes: int,
    seed: int,
    *,
    shards: int = 2,
    alpha: float = 1.0,
    min_samples: int = 2,
    balance: bool = True,
) -> Partition:
    """Split `dataset`'s training set over `n_nodes` nodes with `scheme` (see `SCHEMES`).

    `shards` is for kshard; `alpha`, `min_samples` and `balance` for dirichlet. Raises ValueError
    for an unknown scheme, impossible sizes, or any node left without training samples.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if not isinstance(n_nodes, int | np.integer) or n_nodes < 1:
        raise ValueError(f"n_nodes must be a positive integer, not {n_nodes!r}")
    n_nodes, seed = int(n_nodes), int(seed)
    split = resolve(PARTITIONERS.get(scheme).split)
    part = split(
        dataset, n_nodes, seed, shards=shards, alpha=alpha, min_samples=min_samples, balance=balance
    )
    if not isinstance(part, Partition) or len(part.train) != n_nodes:
        raise ValueError(f"partition {scheme!r} did not give a Partition over {n_nodes} nodes")
    part.info.setdefault("scheme", scheme)
    for node, idx in enumerate(part.train):
        if len(idx) == 0:
            raise ValueError(
                f"partition {scheme!r} left node {node} with no training samples "
                f"({dataset.n_train} samples over {n_nodes} nodes); use fewer nodes"
            )
    return part


def _labels(dataset: Dataset, scheme: str) -> np.ndarray:
    if dataset.task != "classification":
        raise ValueError(
            f"partition {scheme!r} needs class labels, but dataset {dataset.name!r} is a "
            f"{dataset.task} task; use iid or by_user"
        )
    return dataset.train_y.detach().cpu().numpy().astype(np.int64, copy=False)


def _iid(n_samples: int, n_nodes: int, seed: int) -> Partition:
    """The first `n_samples % n_nodes` nodes get one sample more than the others."""
    perm = np.random.default_rng(seed).permutation(n_samples).astype(np.int64)
    return Partition(train=list(np.array_split(perm, n_nodes)), test=None)


def _kshard(labels: np.ndarray, n_nodes: int, seed: int, shards: int) -> Partition:
    """k-shard as decentralizepy's KShardDataPartitioner does it, sample for sample.

    Sizes: each node's budget is `N // n` samples (the last node also gets the remainder), turned
    into shards of `budget // shards` samples with the reference's float arithmetic:
    `int(frac * N) // shards` with `frac = (N // n) / N`, and for the last node
    `frac + (1 - frac * n)`. On 50,000 samples, 60 nodes, 5 shards: 166-sample shards, 830 samples
    per node and 850 for the last node. The pool starts as the indices stably sorted by label;
    each shard starts at `random.Random(seed).randint(0, len(pool) - 1)`, runs over `shard_len`
    consecutive pool entries (wrapping around the pool's end) and is removed from the pool.
    Whatever stays in the pool belongs to no node: `N - sum(node sizes)` samples (180 in the
    example), at random places in the sorted order; their indices are in `info["unassigned"]`.
    With the official CIFAR-10 order and seed 1234 this is the artifact's partition.
    """
    if not isinstance(shards, int | np.integer) or shards < 1:
        raise ValueError(f"kshard: shards must be a positive integer, not {shards!r}")
    n = len(labels)
    per_node = n // n_nodes
    if per_node // shards < 1:
        raise ValueError(
            f"kshard: {n} samples over {n_nodes} nodes give {per_node} per node, fewer than "
            f"shards={shards}; use fewer nodes or shards"
        )
    frac = per_node / n
    budgets = [frac] * n_nodes
    budgets[-1] += 1.0 - frac * n_nodes
    shard_lens = [int(b * n) // shards for b in budgets]

    rnd = random.Random(seed)
    pool = np.argsort(labels, kind="stable").astype(np.int64)
    train: list[np.ndarray] = []
    for length in shard_lens:
        pieces: list[np.ndarray] = []
        for _ in range(shards):
            size = len(pool)
            assert size >= length, "kshard pool exhausted"  # impossible: budgets sum to <= n
            start = rnd.randint(0, size - 1)
            end = start + length
            if end > size:
                over = end - size
                pieces += [pool[start:], pool[:over]]
                pool = pool[over:start]
            else:
                pieces.append(pool[start:end])
                pool = np.concatenate([pool[:start], pool[end:]])
        train.append(np.concatenate(pieces))
    return Partition(
        train=train,
        test=None,
        info={"shards": shards, "shard_lens": shard_lens, "unassigned": np.sort(pool)},
    )


def _dirichlet(
    labels: np.ndarray,
    num_classes: int,
    n_nodes: int,
    seed: int,
    alpha: float,
    min_samples: int,
    balance: bool,
) -> Partition:
    """Per class, shuffle its samples and cut them by Dirichlet(alpha) shares over the nodes.

    With `balance` (as decentralizepy, which the JWINS runs used), a node already holding at least
    N / n samples gets no share of later classes, which keeps node sizes from diverging. The whole
    draw is repeated, with the same generator, until every node has at least `min_samples`
    samples, at most DIRICHLET_MAX_TRIES times.
    """
    if not alpha > 0:
        raise ValueError(f"dirichlet: alpha must be positive, not {alpha!r}")
    n = len(labels)
    if min_samples * n_nodes > n:
        raise ValueError(
            f"dirichlet: {n_nodes} nodes x min_samples={min_samples} exceeds the {n} samples"
        )
    by_class = [np.flatnonzero(labels == k) for k in range(num_classes)]
    rng = np.random.default_rng(seed)
    cap = n / n_nodes
    concentration = np.full(n_nodes, float(alpha))
    for attempt in range(1, DIRICHLET_MAX_TRIES + 1):
        buckets: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
        sizes = np.zeros(n_nodes, dtype=np.int64)
        for members in by_class:
            idx = rng.permutation(members)
            shares = rng.dirichlet(concentration)
            if balance:
                capped = shares * (sizes < cap)
                if capped.sum() > 0:  # tiny alpha can put all mass on full nodes
                    shares = capped
            shares = shares / shares.sum()
            cuts = (np.cumsum(shares) * len(idx)).astype(np.int64)[:-1]
            for node, piece in enumerate(np.split(idx, cuts)):
                buckets[node].append(piece)
                sizes[node] += len(piece)
        if sizes.min() >= min_samples:
            train = [rng.permutation(np.concatenate(b)).astype(np.int64) for b in buckets]
            return Partition(train=train, test=None, info={"alpha": alpha, "attempts": attempt})
    raise ValueError(
        f"dirichlet: no draw in {DIRICHLET_MAX_TRIES} tries gave every one of {n_nodes} nodes "
        f"at least {min_samples} samples (alpha={alpha}); raise alpha, lower min_samples or "
        "use fewer nodes"
    )


def _rows_by_user(users: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(users, kind="stable")
    pos = np.searchsorted(users[order], edges)
    return [order[pos[i] : pos[i + 1]].astype(np.int64) for i in range(len(edges) - 1)]


def _by_user(dataset: Dataset, n_nodes: int) -> Partition:
    """Contiguous blocks of user ids; the first `U % n` nodes get one user more.

    A node's train and test sets are its own users' train and test ratings, as in the reference,
    so evaluation is local (`test` is set).
    """
    if dataset.task != "regression" or tuple(dataset.input_shape) != (2,):
        raise ValueError(
            f"partition 'by_user' needs a MovieLens-style dataset (x = [user, item]), "
            f"not {dataset.name!r}"
        )
    tr_users = dataset.train_x[:, 0].detach().cpu().numpy()
    te_users = dataset.test_x[:, 0].detach().cpu().numpy()
    n_users = dataset.info.get("n_users")
    if n_users is None:
        n_users = int(max(tr_users.max(initial=-1), te_users.max(initial=-1))) + 1
    n_users = int(n_users)
    if n_nodes > n_users:
        raise ValueError(f"by_user: {n_nodes} nodes but only {n_users} users; use fewer nodes")
    base, extra = divmod(n_users, n_nodes)
    counts = np.array([base + 1] * extra + [base] * (n_nodes - extra), dtype=np.int64)
    edges = np.concatenate([[0], np.cumsum(counts)])
    return Partition(
        train=_rows_by_user(tr_users, edges),
        test=_rows_by_user(te_users, edges),
        info={"user_ranges": [(int(edges[i]), int(edges[i + 1])) for i in range(n_nodes)]},
    )


# -- the built-in partitioners: split(dataset, n_nodes, seed, **data keys) -> Partition ---------


def _split_iid(dataset: Dataset, n_nodes: int, seed: int, **_: Any) -> Partition:
    return _iid(dataset.n_train, n_nodes, seed)


def _split_kshard(dataset: Dataset, n_nodes: int, seed: int, *, shards: int, **_: Any) -> Partition:
    return _kshard(_labels(dataset, "kshard"), n_nodes, seed, shards)


def _split_dirichlet(
    dataset: Dataset,
    n_nodes: int,
    seed: int,
    *,
    alpha: float,
    min_samples: int,
    balance: bool = True,
    **_: Any,
) -> Partition:
    labels = _labels(dataset, "dirichlet")
    num_classes = max(int(dataset.num_classes or 0), int(labels.max(initial=-1)) + 1)
    return _dirichlet(labels, num_classes, n_nodes, seed, alpha, min_samples, balance)


def _split_by_user(dataset: Dataset, n_nodes: int, seed: int, **_: Any) -> Partition:
    return _by_user(dataset, n_nodes)


register_partitioner("iid", _split_iid, description="seeded shuffle, split into near-equal parts")
register_partitioner(
    "kshard",
    _split_kshard,
    description="sort by label, each node takes `shards` contiguous shards at random positions",
)
register_partitioner(
    "dirichlet",
    _split_dirichlet,
    description="per class, Dirichlet(alpha) shares over nodes (small alpha = more skew)",
)
register_partitioner(
    "by_user",
    _split_by_user,
    needs_kind="ratings",
    description="MovieLens: contiguous blocks of users per node, with local test sets",
)
