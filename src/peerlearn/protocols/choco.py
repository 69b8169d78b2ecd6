"""CHOCO-SGD (Koloskova et al. 2019), memory-efficient form, in synchronous rounds.

Each node keeps its public copy x_hat (what its neighbours know of it) and s = sum_j w_ij x_hat_j
(self included), both starting at 0. After local training it sends the compressed difference
q = TopK_fraction(x - x_hat) to every neighbour; once it has every neighbour's q of the round:

    x_hat += q_own
    s     += sum_j w_ij q_j + (1 - sum_j w_ij) q_own        (Metropolis-Hastings weights)
    x     += gamma * (s - x_hat)

Only differences travel, and the error x - x_hat is carried over instead of lost, which is what
lets CHOCO converge with aggressive compression. With fraction 1 (identity compressor) and
gamma = 1 this is D-PSGD. The weights must be fixed and symmetric (a static topology), or s
drifts away from the true weighted sum. See ``docs/algorithms_sparse.md`` for gamma.

``wire = "reference"`` reproduces what decentralizepy's CHOCO puts on the wire: its TopK keeps
every coordinate whose |q| equals the k-th largest (``top_k_with_ties``), and its indices are
int64 (``SparseVector64``). The default keeps exactly k and sends int32 indices.
"""

from __future__ import annotations

import numpy as np

from peerlearn.codecs.floats import float_codec
from peerlearn.codecs.message import Payload
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.sparse import SparseVector, SparseVector64
from peerlearn.protocols.base import Action, Record, default_params
from peerlearn.protocols.rounds import SyncRounds
from peerlearn.protocols.sparse import top_k_indices


def top_k_with_ties(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of every score >= the k-th largest score: the reference CHOCO's TopK.

    decentralizepy takes t = the k-th largest |q| (``torch.kthvalue`` of -|q|) and zeroes the
    coordinates with |q| < t, so every coordinate tied with t survives: more than k come back
    when several scores equal t, never fewer. k = round(fraction * N) <= 0 skips the
    sparsification there, so everything is kept (the caller then drops exact zeros, as the
    reference's ``nonzero()`` does).
    """
    size = scores.size
    if k <= 0 or k >= size:
        return np.arange(size, dtype=np.int64)
    threshold = np.partition(scores, size - k)[size - k]
    return np.flatnonzero(scores >= threshold).astype(np.int64)


class Choco(SyncRounds):
    name = "choco"
    description = "CHOCO-SGD: TopK-compressed differences to public copies, consensus step gamma"

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        params = default_params("choco", params)
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.n = int(ctx.model.numel())
        self.codec = float_codec(params.float_codec) if params.compress else None
        self.reference = params.wire == "reference"
        self.x_hat = np.zeros(self.n, dtype=np.float32)
        self.s = np.zeros(self.n, dtype=np.float32)
        self.q: tuple[np.ndarray, np.ndarray] | None = None  # own (indices, values) this round

    def state_dict(self) -> dict:
        return {**super().state_dict(), "x_hat": self.x_hat, "s": self.s, "q": self.q}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.x_hat, self.s, self.q = state["x_hat"], state["s"], state["q"]

    def start_records(self) -> list[Action]:
        if self.codec is None:
            return []
        return [Record("float_codec_fpzip", 1.0 if self.codec.name == "fpzip" else 0.0)]

    def make_payload(self) -> tuple[Payload, list[Action]]:
        diff = self.model_array() - self.x_hat
        if self.reference:
            idx = top_k_with_ties(np.abs(diff), round(self.params.fraction * self.n))
        elif self.params.fraction >= 1:
            idx = np.arange(self.n, dtype=np.int64)
        else:
            idx = top_k_indices(np.abs(diff), round(self.params.fraction * self.n))
        idx = idx[diff[idx] != 0]  # as the reference: only the non-zeros of q travel
        values = diff[idx]
        self.q = (idx, values)
        payload: Payload
        if self.codec is None:
            sparse = SparseVector64 if self.reference else SparseVector
            payload = sparse(idx, values, self.degree)
        else:
            payload = PartialPayload(values, idx, self.degree, self.codec)
        return payload, [Record("sent_fraction", idx.size / self.n)]

    def merge(self, got: dict[int, Payload], weights: dict[int, float]) -> None:
        assert self.q is not None
        own_idx, own_vals = self.q
        self.x_hat[own_idx] += own_vals
        for j in sorted(got):
            q = got[j]
            self.s[q.indices] += np.float32(weights[j]) * q.values
        self.s[own_idx] += np.float32(weights[-1]) * own_vals
        x = self.model_array()
        x += np.float32(self.params.gamma) * (self.s - self.x_hat)
        self.set_model(x)
        self.q = None
