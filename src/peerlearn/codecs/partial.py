"""Partial-sharing messages (JWINS, TopK; CHOCO-SGD with ``compress``): Elias indices + float codec.

A partial message carries sorted coordinates (Elias-gamma coded, see ``elias``) and the values
there (through a lossless float codec, see ``floats``); a full message carries every value and no
indices, as the reference does when alpha >= metadata_cap. The encoded bytes are built once, when
the payload is made, because the simulator needs their exact number and fpzip's output size is
only known by compressing.

Wire format (little-endian)::

    int32 degree | uint8 flags | Elias block (partial only) | float blob (to the end)
    flags: bit 0 = full share; bits 4-7 = float codec id (0 raw float32, 1 fpzip)

data = the float blob (fpzip's own small header included); meta = degree, flags, Elias block.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from peerlearn.codecs import elias
from peerlearn.codecs.floats import RAW, FloatCodec, codec_by_id
from peerlearn.codecs.message import Payload, PayloadError

_HEAD = struct.Struct("<iB")
_FULL = 0x01


@dataclass(eq=False, slots=True)
class PartialPayload(Payload):
    """Values at sorted ``indices`` (``None``: the whole vector) and the sender's degree."""

    values: np.ndarray
    indices: np.ndarray | None = None
    degree: int = 0
    codec: FloatCodec = RAW
    _index_blob: bytes = field(init=False, repr=False, default=b"")
    _value_blob: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        self.values = np.ascontiguousarray(self.values, dtype=np.float32).reshape(-1)
        if self.indices is not None:
            self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
            if self.indices.size != self.values.size:
                raise ValueError(f"{self.indices.size} indices but {self.values.size} values")
            self._index_blob = elias.encode(self.indices)
        self._value_blob = self.codec.encode(self.values)

    @property
    def full(self) -> bool:
        return self.indices is None

    @property
    def data_bytes(self) -> int:
        return len(self._value_blob)

    @property
    def meta_bytes(self) -> int:
        return _HEAD.size + len(self._index_blob)

    def encode(self) -> bytes:
        flags = (self.codec.codec_id << 4) | (_FULL if self.full else 0)
        return _HEAD.pack(self.degree, flags) + self._index_blob + self._value_blob

    def to_state(self) -> dict:
        """For checkpoints (``sim/state.py``): the fields and the encoded blobs (no re-encoding)."""
        return {
            "values": self.values,
            "indices": self.indices,
            "degree": self.degree,
            "codec": self.codec.codec_id,
            "index_blob": np.frombuffer(self._index_blob, dtype=np.uint8),
            "value_blob": np.frombuffer(self._value_blob, dtype=np.uint8),
        }

    @classmethod
    def from_state(cls, state: dict) -> PartialPayload:
        payload = object.__new__(cls)
        payload.values = np.ascontiguousarray(state["values"], dtype=np.float32)
        indices = state["indices"]
        payload.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        payload.degree = int(state["degree"])
        payload.codec = codec_by_id(int(state["codec"]))
        payload._index_blob = np.asarray(state["index_blob"], dtype=np.uint8).tobytes()
        payload._value_blob = np.asarray(state["value_blob"], dtype=np.uint8).tobytes()
        return payload

    @classmethod
    def decode(
        cls, buf: bytes, *, codec: FloatCodec | None = None, max_values: int = 2**31 - 1
    ) -> PartialPayload:
        """Parse a payload; every count is checked before anything is decoded.

        ``codec``: the only float codec accepted (a deployed receiver passes its run's, never
        trusting the flags); None takes the flags' codec, for bytes this process made.
        ``max_values``: the most values (and the bound on indices) the receiver accepts.
        """
        if len(buf) < _HEAD.size:
            raise ValueError(f"partial payload of {len(buf)} bytes is malformed")
        degree, flags = _HEAD.unpack_from(buf)
        if flags & ~(0xF0 | _FULL):
            raise PayloadError("malformed", f"partial payload flags {flags:#x}")
        if codec is None:
            codec = codec_by_id(flags >> 4)
        elif flags >> 4 != codec.codec_id:
            raise PayloadError(
                "wrong_codec", f"float codec id {flags >> 4}, this run uses {codec.name}"
            )
        pos = _HEAD.size
        indices = None
        if not flags & _FULL:
            indices, used = elias.decode(buf, pos, limit=max_values)
            pos += used
        value_blob = bytes(buf[pos:])
        count = codec.count(value_blob, max_values)
        if indices is not None and indices.size != count:
            raise PayloadError(
                "bad_count", f"partial payload has {indices.size} indices but {count} values"
            )
        values = codec.decode(value_blob, count)
        # keep the received blobs instead of re-encoding (fpzip is the expensive part)
        payload = object.__new__(cls)
        payload.values = values
        payload.indices = indices
        payload.degree = degree
        payload.codec = codec
        payload._index_blob = bytes(buf[_HEAD.size : pos])
        payload._value_blob = value_blob
        return payload
