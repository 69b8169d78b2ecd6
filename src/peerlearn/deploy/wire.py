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

Kind and payload ids, and which payloads an algorithm accepts, come from the registries
(``peerlearn.components``): a plugin's payload brings its own wire id, decoder and range check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from peerlearn.codecs.builtin import partial_bound
from peerlearn.codecs.floats import RAW, FloatCodec
from peerlearn.codecs.message import (
    HEADER,
    HEADER_BYTES,
    MAGIC,
    WIRE_VERSION,
    Message,
    Payload,
    PayloadError,
)
from peerlearn.components import ALGORITHMS, KINDS, PAYLOADS, PayloadEntry
from peerlearn.registry import resolve

__all__ = ["partial_bound"]


class _WireIds:
    """Message kinds and payload types by wire id and back, rebuilt when a plugin registers
    one (the registries' ``version``)."""

    def __init__(self) -> None:
        self._versions = (-1, -1)
        self.kind_ids: dict[str, int] = {}
        self.kind_names: dict[int, str] = {}
        self.payload_ids: dict[type, int] = {}
        self.payloads: dict[int, PayloadEntry] = {}
        self.classes: dict[int, type[Payload]] = {}

    def current(self) -> _WireIds:
        # per frame: two integer compares; the tables are rebuilt only after a registration
        if (KINDS.version, PAYLOADS.version) != self._versions:
            kinds, payloads = KINDS.entries(), PAYLOADS.entries()  # built-ins load on first use
            self.kind_ids = {e.name: e.wire_id for e in kinds}
            self.kind_names = {i: k for k, i in self.kind_ids.items()}
            self.payloads = {e.wire_id: e for e in payloads}
            self.classes = {i: e.payload_class() for i, e in self.payloads.items()}
            self.payload_ids = {cls: i for i, cls in self.classes.items()}
            self._versions = (KINDS.version, PAYLOADS.version)
        return self


_IDS = _WireIds()


def payload_types() -> dict[int, type[Payload]]:
    """Payload classes by wire id (id 0 is never valid)."""
    return dict(_IDS.current().classes)


def algorithm_payloads(name: str) -> frozenset[type[Payload]]:
    """The payload types algorithm ``name`` may receive (its registry entry says which)."""
    return ALGORITHMS.get(name).payload_classes()


class WireError(ValueError):
    """A frame that must be dropped; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def default_max_bytes(numel: int) -> int:
    """Room for the largest honest message: 12 bytes per coordinate (a sparse payload with int64
    indices holding them all) plus headers."""
    return HEADER_BYTES + 12 * numel + 4096


def encode_message(msg: Message) -> bytes:
    """Header + payload bytes; the length equals ``msg.nbytes`` (what the simulator counts)."""
    ids = _IDS.current()
    kind = ids.kind_ids.get(msg.kind)
    ptype = ids.payload_ids.get(type(msg.payload))
    if kind is None or ptype is None:
        raise ValueError(f"no wire id for kind {msg.kind!r} / payload {type(msg.payload).__name__}")
    body = msg.payload.encode()
    head = HEADER.pack(
        MAGIC, WIRE_VERSION, kind | (ptype << 4), msg.src, msg.dst, msg.iteration, len(body)
    )
    return head + body


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
    #: the message kinds the algorithm sends (None: any registered kind)
    kinds: frozenset[str] | None = None


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
    ids = _IDS.current()
    kind = ids.kind_names.get(kind_byte & 0x0F)
    cls = ids.classes.get(kind_byte >> 4)
    if kind is None or cls is None:
        raise WireError("bad_type", f"kind byte {kind_byte:#x}")
    if cls not in limits.allowed:
        raise WireError("bad_type", f"{cls.__name__} is not used by this algorithm")
    if limits.kinds is not None and kind not in limits.kinds:
        raise WireError("bad_type", f"message kind {kind!r} is not used by this algorithm")
    entry = ids.payloads[kind_byte >> 4]
    body = frame[HEADER_BYTES:]
    try:
        if entry.decode is not None:
            payload = resolve(entry.decode)(
                body, numel=limits.numel, float_codec=limits.float_codec
            )
        else:
            payload = cls.decode(body)
        if type(payload) is not cls:
            raise TypeError(f"decoded a {type(payload).__name__}")
        if entry.check is not None:
            resolve(entry.check)(payload, limits.numel)
    except PayloadError as exc:
        raise WireError(exc.reason, f"{cls.__name__}: {exc}") from None
    except Exception as exc:  # any codec failure is the sender's fault, never the receiver's
        raise WireError("undecodable", f"{cls.__name__}: {exc}") from None
    if not _finite(payload.values):
        raise WireError("not_finite", "NaN or infinite values")
    return Message(src, dst, kind, iteration, payload)


def _finite(values: torch.Tensor | np.ndarray) -> bool:
    if isinstance(values, torch.Tensor):
        return bool(torch.isfinite(values).all())
    return bool(np.isfinite(values).all())
