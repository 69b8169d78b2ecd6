"""The deployed wire format: the simulator's fixed header, then the codec's own bytes.

One ZeroMQ frame per message: ``HEADER`` of ``codecs.message`` (28 bytes, little-endian: magic
``PL``, version, kind byte, sender, receiver, iteration, payload length) followed by exactly
``payload.encode()``. Reusing the simulator's header keeps ``Message.nbytes`` equal to the bytes a
deployed node hands to ZeroMQ. The kind byte carries two 4-bit ids (low nibble: message kind,
high nibble: payload type) so the 28-byte size, and every simulated byte count, stays unchanged.

Nothing here trusts the bytes: ``decode_message`` checks every field and raises ``WireError``
naming the reason, which the runtime counts. No pickle, ever: a frame is only ever parsed by the
fixed struct and the codecs' ``decode``. Float blobs are decoded only with the run's own float
codec (``WireLimits.float_codec``), whatever codec a frame's flags name; a deployed node's fpzip
is ``deploy.decoder.SandboxedFpzip``, which never runs fpzip's C decoder in the node's process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.floats import RAW, FloatCodec
from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import (
    HEADER,
    HEADER_BYTES,
    MAGIC,
    WIRE_VERSION,
    Message,
    Payload,
    PayloadError,
)
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector
from peerlearn.codecs.sparse import SparseVector

#: message kinds the protocols use; id 0 is never valid
KINDS: dict[str, int] = {"model": 1, "fragment": 2, "ping": 3, "reply": 4, "decline": 5}
KIND_NAMES = {v: k for k, v in KINDS.items()}

#: payload classes; id 0 is never valid
PAYLOAD_TYPES: dict[int, type[Payload]] = {
    1: DenseVector,
    2: FragmentPayload,
    3: PartialPayload,
    4: SparseVector,
    5: SeedMaskVector,
}
PAYLOAD_IDS = {cls: i for i, cls in PAYLOAD_TYPES.items()}

#: which payload types each algorithm may receive (anything else is rejected before decoding)
ALGORITHM_PAYLOADS: dict[str, frozenset[type[Payload]]] = {
    "dpsgd": frozenset({DenseVector}),
    "divshare": frozenset({FragmentPayload}),
    "swift": frozenset({FragmentPayload}),
    "adpsgd": frozenset({FragmentPayload}),
    "jwins": frozenset({PartialPayload}),
    "topk": frozenset({PartialPayload}),
    "subsampling": frozenset({SeedMaskVector}),
    "choco": frozenset({SparseVector, PartialPayload}),
    "el_oracle": frozenset({DenseVector}),
    "el_local": frozenset({DenseVector}),
    "gossip": frozenset({DenseVector}),
}


class WireError(ValueError):
    """A frame that must be dropped; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def default_max_bytes(numel: int) -> int:
    """Room for the largest honest message: 8 bytes per coordinate (sparse) plus headers."""
    return HEADER_BYTES + 8 * numel + 4096


def encode_message(msg: Message) -> bytes:
    """Header + payload bytes; the length equals ``msg.nbytes`` (what the simulator counts)."""
    kind = KINDS.get(msg.kind)
    ptype = PAYLOAD_IDS.get(type(msg.payload))
    if kind is None or ptype is None:
        raise ValueError(f"no wire id for kind {msg.kind!r} / payload {type(msg.payload).__name__}")
    body = msg.payload.encode()
    head = HEADER.pack(
        MAGIC, WIRE_VERSION, kind | (ptype << 4), msg.src, msg.dst, msg.iteration, len(body)
    )
    return head + body


def partial_bound(numel: int) -> int:
    """Most values, and bound on indices, of a partial payload: it may carry transform
    coefficients (JWINS's wavelets), a little more than the model."""
    return 2 * numel + 1024


@dataclass(frozen=True)
class WireLimits:
    """What a receiver accepts: its own id, the run's size, the algorithm's payload types, and
    the run's float codec (the only one a partial payload may use)."""

    node: int
    n_nodes: int
    numel: int
    allowed: frozenset[type[Payload]]
    max_bytes: int
    float_codec: FloatCodec = RAW


def decode_message(frame: bytes, limits: WireLimits, *, identity: int | None = None) -> Message:
    """Parse and validate one frame; ``identity`` is the sender id ZeroMQ reported, if any."""
    if len(frame) > limits.max_bytes:
        raise WireError("oversized", f"{len(frame)} bytes > limit {limits.max_bytes}")
    if len(frame) < HEADER_BYTES:
        raise WireError("malformed", f"{len(frame)} bytes is shorter than the header")
    magic, version, kind_byte, src, dst, iteration, length = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise WireError("bad_magic", f"magic {magic!r}")
    if version != WIRE_VERSION:
        raise WireError("bad_version", f"version {version}, this node speaks {WIRE_VERSION}")
    if not 0 <= src < limits.n_nodes or src == limits.node:
        raise WireError("bad_sender", f"sender {src}")
    if identity is not None and identity != src:
        raise WireError("spoofed_sender", f"header says {src}, connection is node {identity}")
    if dst != limits.node:
        raise WireError("bad_receiver", f"addressed to {dst}, this is node {limits.node}")
    if length != len(frame) - HEADER_BYTES:
        raise WireError("malformed", f"header announces {length} payload bytes")
    if iteration < 0:
        raise WireError("malformed", f"iteration {iteration}")
    kind = KIND_NAMES.get(kind_byte & 0x0F)
    cls = PAYLOAD_TYPES.get(kind_byte >> 4)
    if kind is None or cls is None:
        raise WireError("bad_type", f"kind byte {kind_byte:#x}")
    if cls not in limits.allowed:
        raise WireError("bad_type", f"{cls.__name__} is not used by this algorithm")
    body = frame[HEADER_BYTES:]
    try:
        if cls is PartialPayload:
            payload = PartialPayload.decode(
                body, codec=limits.float_codec, max_values=partial_bound(limits.numel)
            )
        else:
            payload = cls.decode(body)
    except PayloadError as exc:
        raise WireError(exc.reason, f"{cls.__name__}: {exc}") from None
    except Exception as exc:  # any codec failure is the sender's fault, never the receiver's
        raise WireError("undecodable", f"{cls.__name__}: {exc}") from None
    _check_payload(payload, limits.numel)
    return Message(src, dst, kind, iteration, payload)


def _finite(values: torch.Tensor | np.ndarray) -> bool:
    if isinstance(values, torch.Tensor):
        return bool(torch.isfinite(values).all())
    return bool(np.isfinite(values).all())


def _check_payload(payload: Payload, numel: int) -> None:
    """Ranges the codecs cannot know: lengths and indices against the model size, no NaN/inf."""
    match payload:
        case DenseVector():
            if payload.values.numel() != numel:
                raise WireError("bad_range", f"dense vector of {payload.values.numel()} != {numel}")
        case FragmentPayload():
            # the exact per-fragment length is checked by the protocol against its partition
            if payload.values.numel() > numel:
                raise WireError("bad_range", "fragment longer than the model")
        case SparseVector() | PartialPayload():
            idx = payload.indices
            # partial payloads may index transform coefficients, a little more than the model
            bound = numel if isinstance(payload, SparseVector) else partial_bound(numel)
            if idx is not None and idx.size:
                if idx.min() < 0 or idx.max() >= bound:
                    raise WireError("bad_range", "index out of range")
                if np.unique(idx).size != idx.size:
                    raise WireError("bad_range", "duplicate indices")
            elif idx is None and payload.values.size > bound:
                raise WireError("bad_range", "full vector longer than the model")
        case SeedMaskVector():
            if payload.n != numel or not 0.0 <= payload.fraction <= 1.0:
                raise WireError("bad_range", f"mask over {payload.n} coordinates, model {numel}")
            try:
                payload.indices()
            except ValueError as exc:
                raise WireError("bad_range", str(exc)) from None
    if not _finite(payload.values):
        raise WireError("not_finite", "NaN or infinite values")
