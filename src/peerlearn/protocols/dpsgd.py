"""D-PSGD (Lian et al. 2017) in synchronous rounds, as decentralizepy runs it.

Each round: train ``local_steps`` SGD steps, send the trained model to every neighbour, wait for
every neighbour's model of the same round, then average with Metropolis-Hastings weights
w_ij = 1 / (1 + max(d_i, d_j)), w_ii = 1 - sum_j w_ij; the neighbour's degree is in the message.
Models of later rounds that arrive early are buffered (the round itself is ``SyncRounds``).

The model travels as raw float32 (``DenseVector``) by default. With ``float_codec`` "fpzip" or
"auto" it travels through that lossless codec as a full-share ``PartialPayload`` (JWINS's
format without indices), so D-PSGD can be compared with JWINS at the same float codec: the
received values are bit for bit the sent ones, so every model is the raw run's and only the
bytes differ (1 byte more metadata: the payload's flags).
"""

from __future__ import annotations

import torch

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.floats import FloatCodec, float_codec
from peerlearn.codecs.message import Message, Payload
from peerlearn.codecs.partial import PartialPayload
from peerlearn.protocols.base import Action, Record
from peerlearn.protocols.rounds import SyncRounds, metropolis_hastings

__all__ = ["DPSGD", "metropolis_hastings"]


class DPSGD(SyncRounds):
    name = "dpsgd"
    description = "synchronous D-PSGD: full model to every neighbour, Metropolis-Hastings averaging"

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        # unset (params None, a plugin's config without the key, or "raw"): the dense payload
        choice = getattr(params, "float_codec", None)
        self.codec: FloatCodec | None = None if choice is None else float_codec(choice)

    def start_records(self) -> list[Action]:
        if self.codec is None:  # the default run records exactly what it always did
            return []
        return [Record("float_codec_fpzip", 1.0 if self.codec.name == "fpzip" else 0.0)]

    def make_payload(self) -> tuple[Payload, list[Action]]:
        if self.codec is None:
            return DenseVector(self.ctx.model.clone(), degree=self.degree), []
        return PartialPayload(self.model_array(), None, self.degree, self.codec), []

    def on_message(self, message: Message) -> list[Action]:
        payload = message.payload
        # the wire checks a partial payload only against a bound (it may hold transform
        # coefficients); D-PSGD's are always whole models, anything else is a peer's mistake
        if isinstance(payload, PartialPayload) and (
            not payload.full or payload.values.size != self.ctx.model.numel()
        ):
            return [Record("ignored_messages", 1.0)]
        return super().on_message(message)

    def merge(self, got: dict[int, Payload], weights: dict[int, float]) -> None:
        x = self.ctx.model
        mixed = x * weights[-1]
        for j in sorted(got):  # fixed order: identical sums in every run
            mixed.add_(_as_tensor(got[j]), alpha=weights[j])
        x.copy_(mixed)


def _as_tensor(payload: Payload) -> torch.Tensor:
    """The model a neighbour sent, as a float32 tensor (the same values whatever the codec)."""
    if isinstance(payload, PartialPayload):
        return torch.from_numpy(payload.values)
    return payload.values
