"""The built-in wire payloads and message kinds, with the checks a receiver makes.

Wire ids are part of the format (``deploy.wire``): never renumber them. A check raises
``PayloadError`` for what a codec cannot judge alone: lengths and indices against the model.
"""

from __future__ import annotations

import numpy as np

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.floats import FloatCodec
from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import PayloadError
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector
from peerlearn.codecs.sparse import SparseVector, SparseVector64
from peerlearn.components import register_message_kind, register_payload


def partial_bound(numel: int) -> int:
    """Most values, and bound on indices, of a partial payload: it may carry transform
    coefficients (JWINS's wavelets), a little more than the model."""
    return 2 * numel + 1024


def _check_dense(payload: DenseVector, numel: int) -> None:
    if payload.values.numel() != numel:
        raise PayloadError("bad_range", f"dense vector of {payload.values.numel()} != {numel}")


def _check_fragment(payload: FragmentPayload, numel: int) -> None:
    # the exact per-fragment length is checked by the protocol against its partition
    if payload.values.numel() > numel:
        raise PayloadError("bad_range", "fragment longer than the model")


def _check_indexed(idx: np.ndarray | None, size: int, bound: int) -> None:
    if idx is not None and idx.size:
        if idx.min() < 0 or idx.max() >= bound:
            raise PayloadError("bad_range", "index out of range")
        if np.unique(idx).size != idx.size:
            raise PayloadError("bad_range", "duplicate indices")
    elif idx is None and size > bound:
        raise PayloadError("bad_range", "full vector longer than the model")


def _check_sparse(payload: SparseVector, numel: int) -> None:
    _check_indexed(payload.indices, payload.values.size, numel)


def _check_partial(payload: PartialPayload, numel: int) -> None:
    # partial payloads may index transform coefficients, a little more than the model
    _check_indexed(payload.indices, payload.values.size, partial_bound(numel))


def _decode_partial(body: bytes, *, numel: int, float_codec: FloatCodec) -> PartialPayload:
    # only the run's own float codec, whatever codec the frame's flags name
    return PartialPayload.decode(body, codec=float_codec, max_values=partial_bound(numel))


def _check_seedmask(payload: SeedMaskVector, numel: int) -> None:
    if payload.n != numel or not 0.0 <= payload.fraction <= 1.0:
        raise PayloadError("bad_range", f"mask over {payload.n} coordinates, model {numel}")
    try:
        payload.indices()
    except ValueError as exc:
        raise PayloadError("bad_range", str(exc)) from None


register_payload(
    "dense", DenseVector, wire_id=1, check=_check_dense, description="the full model vector"
)
register_payload(
    "fragment",
    FragmentPayload,
    wire_id=2,
    check=_check_fragment,
    description="one fragment of a fixed partition of the model (DivShare, Swift, AD-PSGD)",
)
register_payload(
    "partial",
    PartialPayload,
    wire_id=3,
    decode=_decode_partial,
    check=_check_partial,
    description="values at Elias-gamma coded indices, float codec (JWINS, TopK, CHOCO)",
)
register_payload(
    "sparse",
    SparseVector,
    wire_id=4,
    check=_check_sparse,
    description="raw int32 indices and float32 values (CHOCO)",
)
register_payload(
    "sparse64",
    SparseVector64,
    wire_id=6,
    check=_check_sparse,
    description="raw int64 indices and float32 values (CHOCO at the reference's wire cost)",
)
register_payload(
    "seedmask",
    SeedMaskVector,
    wire_id=5,
    check=_check_seedmask,
    description="values under a seeded random mask, the seed instead of indices",
)

for _id, (_kind, _desc) in enumerate(
    (
        ("model", "a model or a part of one"),
        ("fragment", "a model fragment"),
        ("ping", "AD-PSGD: a request for the peer's model"),
        ("reply", "AD-PSGD: the answer to a ping"),
        ("decline", "AD-PSGD (atomic): a busy peer refuses an exchange"),
    ),
    start=1,
):
    register_message_kind(_kind, wire_id=_id, description=_desc)
