"""Fragment machinery shared by DivShare and Swift (and peer sampling for AD-PSGD).

DivShare cuts the model into Ω random fragments that are fixed for the run and identical on every
node, sends each fragment to r random peers, and averages every coordinate over the copies it has
received. Swift is the same machinery with one fragment (the whole model) and no flush, exactly as
in the DivShare artifact. Both live here as ``FragmentGossip``; the subclasses only fix parameters.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from peerlearn.codecs.fragment import FragmentPayload, numpy_view
from peerlearn.codecs.message import Message
from peerlearn.protocols.base import (
    Action,
    DropPending,
    Finish,
    NodeContext,
    Protocol,
    Record,
    Send,
    Train,
)

#: separates the fragment stream from every other use of the run seed
_FRAGMENT_STREAM = 0xD15A


@functools.lru_cache(maxsize=16)
def _partition_cached(
    sizes: tuple[int, ...], n_fragments: int, seed: int
) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng([seed, _FRAGMENT_STREAM])
    parts: list[list[np.ndarray]] = [[] for _ in range(n_fragments)]
    offset = 0
    for numel in sizes:
        perm = rng.permutation(numel)
        step = numel // n_fragments
        for k in range(n_fragments):
            hi = numel if k == n_fragments - 1 else (k + 1) * step
            parts[k].append(offset + perm[k * step : hi])
        offset += numel
    return tuple(
        torch.from_numpy(np.sort(np.concatenate(p)).astype(np.int64))
        if p
        else torch.zeros(0, dtype=torch.int64)
        for p in parts
    )


def fragment_partition(
    sizes: tuple[int, ...], n_fragments: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """The run's fragments as sorted int64 index tensors into the flat vector.

    Per tensor (in layout order) one permutation, cut into ``n_fragments`` slices of
    ``numel // n_fragments``, the remainder going to the last slice (so a tensor smaller than Ω
    lands wholly in the last fragment, as in the artifact). Depends only on ``(sizes, Ω, seed)``,
    so every node computes the same partition; it is cached, so a 60-node run computes it once.
    Callers must not modify the returned tensors.
    """
    if n_fragments < 1:
        raise ValueError(f"need at least one fragment, got {n_fragments}")
    if any(s < 0 for s in sizes):
        raise ValueError(f"tensor sizes must be >= 0, got {sizes}")
    return _partition_cached(tuple(int(s) for s in sizes), int(n_fragments), int(seed))


def layout_sizes(ctx: NodeContext) -> tuple[int, ...]:
    """Tensor sizes of the node's model; one tensor when no layout is given (hand-made contexts)."""
    if ctx.layout is not None:
        return tuple(ctx.layout.sizes())
    return (int(ctx.model.numel()),)


def sample_peers(rng: np.random.Generator, n_nodes: int, me: int, count: int) -> list[int]:
    """``count`` distinct peers drawn uniformly from every node but ``me``."""
    # a handful of values: Python ints are cheaper than two more NumPy calls
    return [i + (i >= me) for i in rng.choice(n_nodes - 1, size=count, replace=False).tolist()]


def random_peers_with_replacement(
    rng: np.random.Generator, n_nodes: int, me: int, count: int
) -> np.ndarray:
    """``count`` peers drawn uniformly, with replacement, from every node but ``me``."""
    idx = rng.integers(0, n_nodes - 1, size=count)
    return idx + (idx >= me)


def effective_fanout(fanout: int, n_nodes: int) -> int:
    """r, capped at the number of other nodes (the artifact's 60 nodes never hit the cap)."""
    if n_nodes < 2:
        raise ValueError(f"gossip needs at least 2 nodes, got {n_nodes}")
    return min(int(fanout), n_nodes - 1)


class FragmentGossip(Protocol):
    """Train -> (flush) -> send Ω fragments to r peers each -> aggregate -> train, no barriers.

    Incoming fragments wait in an inbox that keeps the newest copy per (sender, fragment): newest
    means the highest iteration tag, and on a tie the one that arrived last. At each aggregation
    every coordinate becomes the plain mean of the node's own value and every waiting copy of it
    (all weights 1), and the inbox is emptied.

    Recipients are drawn from all other nodes (``n_nodes``), not from the topology graph: the
    artifact runs on a fully connected graph, and the fresh random choice per fragment is what
    the algorithm relies on.
    """

    #: set by subclasses or from params
    n_fragments: int = 1
    flush: bool = False

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.fanout = effective_fanout(params.fanout, ctx.n_nodes)
        self.fragments = fragment_partition(layout_sizes(ctx), self.n_fragments, ctx.run_seed)
        self.frag_len = [len(f) for f in self.fragments]
        self._frag_np = [f.numpy() for f in self.fragments]  # the same indices, for NumPy views
        # (sender, fragment) -> (iteration tag, payload)
        self.inbox: dict[tuple[int, int], tuple[int, FragmentPayload]] = {}
        self.received = 0  # arrivals since the last aggregation, replacements included
        self.stale_ignored = 0  # arrivals older than the copy already waiting

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "inbox": self.inbox,
            "received": self.received,
            "stale_ignored": self.stale_ignored,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.inbox = dict(state["inbox"])
        self.received = int(state["received"])
        self.stale_ignored = int(state["stale_ignored"])

    # -- events ----------------------------------------------------------------------------------

    def on_start(self) -> list[Action]:
        return [Train(self.local_steps)]

    def on_message(self, message: Message) -> list[Action]:
        payload = message.payload
        if not isinstance(payload, FragmentPayload):
            raise ValueError(f"node {self.ctx.node}: expected a fragment from {message.src}")
        k = payload.fragment
        if not 0 <= k < self.n_fragments or payload.n_values != self.frag_len[k]:
            raise ValueError(
                f"node {self.ctx.node}: fragment {k} from {message.src} with "
                f"{payload.n_values} values does not fit the run's {self.n_fragments} "
                "fragments"
            )
        self.received += 1
        key = (message.src, k)
        waiting = self.inbox.get(key)
        if waiting is not None and waiting[0] > message.iteration:
            self.stale_ignored += 1
        else:
            self.inbox[key] = (message.iteration, payload)
        return []

    def on_training_done(self, steps: int) -> list[Action]:
        actions: list[Action] = []
        if self.flush:
            # Every send of earlier iterations not yet delivered, queued or half-sent, is dropped.
            actions.append(DropPending())
        actions += self._send_fragments()
        actions += self._aggregate()
        self.iteration += 1
        actions.append(Record("iteration_end", float(self.iteration)))
        if self.done_iterating():
            actions.append(Finish())
        else:
            actions.append(Train(self.local_steps))
        return actions

    # -- steps -----------------------------------------------------------------------------------

    def _send_fragments(self) -> list[Action]:
        """Snapshot each fragment once; each goes to a fresh sample of r peers; random order."""
        x = self.ctx.model
        xn = numpy_view(x)
        rng = self.ctx.rng
        pairs: list[tuple[int, FragmentPayload]] = []
        for k, idx in enumerate(self.fragments):
            # advanced indexing copies: a snapshot
            if xn is None:
                payload = FragmentPayload(k, x[idx])
            else:
                payload = FragmentPayload.of_array(k, xn[self._frag_np[k]])
            for j in sample_peers(rng, self.ctx.n_nodes, self.ctx.node, self.fanout):
                pairs.append((j, payload))
        it = self.iteration
        return [
            Send(pairs[i][0], "fragment", it, pairs[i][1])
            for i in rng.permutation(len(pairs)).tolist()
        ]

    def _aggregate(self) -> list[Action]:
        """Per-coordinate mean of own value and every waiting copy; then empty the inbox."""
        records = [
            Record("fragments_received", float(self.received)),
            Record("received_fraction", self.received / (self.fanout * self.n_fragments)),
        ]
        if self.stale_ignored:
            records.append(Record("stale_ignored", float(self.stale_ignored)))
        if self.inbox:
            by_fragment: dict[int, list[FragmentPayload]] = defaultdict(list)
            age_sum = 0
            # keys are unique, so sorting the items compares keys only: (sender, fragment) order
            for (_, k), (tag, payload) in sorted(self.inbox.items()):
                by_fragment[k].append(payload)
                age_sum += self.iteration - tag
            x = self.ctx.model
            xn = numpy_view(x)
            for k in sorted(by_fragment):
                copies = by_fragment[k]
                views = [p.array() for p in copies] if xn is not None else None
                if views is not None and all(v is not None for v in views):
                    _average_into(xn, self._frag_np[k], views)
                else:
                    _average_into(x, self.fragments[k], [p.values for p in copies])
            # an exact integer sum over a count: the same float as np.mean of the ages
            records.append(Record("aggregation_age_mean", age_sum / len(self.inbox)))
            records.append(Record("copies_used", float(len(self.inbox))))
        self.inbox.clear()
        self.received = 0
        self.stale_ignored = 0
        return records


def _average_into(x: Any, idx: Any, copies: list) -> None:
    """``x[idx] = (x[idx] + sum(copies)) / (1 + len(copies))``, summed in order.

    For NumPy arrays or torch tensors alike (the same float32 operations in the same order).
    """
    acc = x[idx]  # a copy (advanced indexing)
    for v in copies:
        acc += v
    x[idx] = acc / (1 + len(copies))
