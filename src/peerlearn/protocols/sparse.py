"""Partial model sharing in synchronous rounds: TopK and random sub-sampling (JWINS's baselines).

Both keep D-PSGD's round (train, send to every neighbour, wait for every neighbour's message of
the same round, buffer later ones, Metropolis-Hastings average) and only change *what* is sent:

* ``TopK`` (decentralizepy's ``PartialModel``): the current parameter values at the round(alpha*N)
  coordinates that changed most since the last averaging (optionally plus the unsent accumulated
  change), with Elias-coded indices; alpha >= metadata_cap sends the whole model.
* ``Subsampling``: the values at a Bernoulli(alpha) mask drawn from a fresh seed each round; the
  seed travels instead of the indices.

A receiver fills every coordinate a neighbour did not send with its *own* value, so that
neighbour's weight on it falls back to self, then averages. ``PartialSharing`` is also the engine
of JWINS, which swaps the identity for a wavelet transform and draws alpha at random
(``protocols/jwins.py``), mirroring the reference's JWINS(Wavelet(PartialModel)) chain.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from peerlearn.codecs.floats import float_codec
from peerlearn.codecs.message import Payload
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector
from peerlearn.protocols.base import Action, Record, default_params
from peerlearn.protocols.rounds import SyncRounds


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` largest scores (ties broken deterministically, exactly k)."""
    size = scores.size
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= size:
        return np.arange(size, dtype=np.int64)
    return np.sort(np.argpartition(scores, size - k)[size - k :]).astype(np.int64)


def mix_with_own(
    own: np.ndarray,
    parts: dict[int, tuple[np.ndarray | None, np.ndarray]],
    weights: dict[int, float],
) -> np.ndarray:
    """Weighted average of ``own`` (weight ``weights[-1]``) and each neighbour's vector, where a
    neighbour's coordinates outside its ``indices`` are taken from ``own`` (indices None: it
    sent them all). Neighbours are summed in id order, so every run gives identical sums."""
    mixed = own * np.float32(weights[-1])
    for j in sorted(parts):
        indices, values = parts[j]
        if indices is None:
            theirs = values
        else:
            theirs = own.copy()
            theirs[indices] = values
        mixed += np.float32(weights[j]) * theirs
    return mixed


class PartialSharing(SyncRounds):
    """Change-ranked partial sharing in a transform domain (identity here, wavelet in JWINS).

    State (names as in jwins.md §3): ``x_prev`` the model after the last averaging (the training
    delta's reference), ``acc`` the accumulator A (transform length) when accumulation is on,
    ``p`` the whole-round reference used when averaging changes are accumulated too, and a
    per-coefficient share counter.
    """

    #: ``acc`` += this round's training change, ranking by the whole unsent change
    accumulation: bool = False
    #: legacy JWINS mode: ranking by train change + A; after averaging A += T(x_new - p)
    accumulate_averaging_changes: bool = False

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.n = int(ctx.model.numel())
        self.codec = float_codec(params.float_codec)
        self.setup_transform()
        self.x_prev = self.model_array()
        self.p = self.x_prev
        self.acc = np.zeros(self.length, dtype=np.float32) if self.accumulation else None
        self.share_counter = np.zeros(self.length, dtype=np.int64)
        self.own: np.ndarray | None = None  # this round's pre-averaging coefficients

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "x_prev": self.x_prev,
            "p": self.p,
            "acc": self.acc,
            "share_counter": self.share_counter,
            "own": self.own,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.x_prev, self.p, self.acc = state["x_prev"], state["p"], state["acc"]
        self.share_counter, self.own = state["share_counter"], state["own"]

    # -- transform hooks (identity) -------------------------------------------------------------
    def setup_transform(self) -> None:
        self.length = self.n

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x

    def inverse(self, c: np.ndarray) -> np.ndarray:
        return c

    @abstractmethod
    def draw_alpha(self) -> float:
        """The fraction of coefficients to send this round."""

    @property
    @abstractmethod
    def metadata_cap(self) -> float: ...

    # -- the round ------------------------------------------------------------------------------
    def start_records(self) -> list[Action]:
        return [Record("float_codec_fpzip", 1.0 if self.codec.name == "fpzip" else 0.0)]

    def make_payload(self) -> tuple[Payload, list[Action]]:
        alpha = self.draw_alpha()
        x = self.model_array()
        coeffs = self.forward(x)
        self.own = coeffs
        if alpha >= self.metadata_cap:  # full share: nothing stays pending
            if self.acc is not None:
                self.acc[:] = 0
            self.share_counter += 1
            payload = PartialPayload(coeffs, None, self.degree, self.codec)
            sent = self.length
        else:
            change = self.forward(x - self.x_prev)
            if self.acc is not None:
                if self.accumulate_averaging_changes:
                    change = change + self.acc
                else:
                    self.acc += change
                    change = self.acc
            idx = top_k_indices(np.abs(change), round(alpha * self.length))
            if self.acc is not None:
                self.acc[idx] = 0  # what is sent is no longer pending
            self.share_counter[idx] += 1
            payload = PartialPayload(coeffs[idx], idx, self.degree, self.codec)
            sent = idx.size
        return payload, [Record("alpha", alpha), Record("sent_fraction", sent / self.length)]

    def merge(self, got: dict[int, PartialPayload], weights: dict[int, float]) -> None:
        assert self.own is not None
        parts = {j: (None if p.full else p.indices, p.values) for j, p in got.items()}
        x_new = self.inverse(mix_with_own(self.own, parts, weights))
        self.set_model(x_new)
        if self.acc is not None and self.accumulate_averaging_changes:
            self.acc += self.forward(x_new - self.p)
        self.p = x_new
        self.x_prev = x_new
        self.own = None


class TopK(PartialSharing):
    name = "topk"
    description = (
        "partial sharing (TopK/PartialModel): most-changed parameters, Elias-coded indices, "
        "receivers fill the rest with their own values"
    )

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        params = default_params("topk", params)
        self.accumulation = params.accumulation
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)

    def draw_alpha(self) -> float:
        return self.params.fraction

    @property
    def metadata_cap(self) -> float:
        return self.params.metadata_cap


class Subsampling(SyncRounds):
    name = "subsampling"
    description = (
        "random sub-sampling: a fresh seeded Bernoulli mask each round, the seed sent instead "
        "of indices"
    )

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        params = default_params("subsampling", params)
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.n = int(ctx.model.numel())
        self.own: np.ndarray | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "own": self.own}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.own = state["own"]

    def make_payload(self) -> tuple[Payload, list[Action]]:
        x = self.model_array()
        self.own = x
        seed = int(self.ctx.rng.integers(0, 2**63))
        payload = SeedMaskVector.of(x, seed, float(self.params.fraction), self.degree)
        return payload, [Record("sent_fraction", payload.values.size / self.n)]

    def merge(self, got: dict[int, SeedMaskVector], weights: dict[int, float]) -> None:
        assert self.own is not None
        parts = {j: (p.indices(), p.values) for j, p in got.items()}
        self.set_model(mix_with_own(self.own, parts, weights))
        self.own = None
