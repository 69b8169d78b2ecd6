"""Sparse vectors on the wire as raw int32 indices + float32 values (CHOCO-SGD's messages).

This is the uncompressed baseline format: 8 bytes per sent coordinate, half of them metadata.
The reference's CHOCO sends int64 indices (its pitfall 6); int32 is enough for any model here and
is what the JWINS paper's own accounting assumes before Elias coding.

Wire format (little-endian)::

    int32 degree | uint32 count | int32 indices[count] | float32 values[count]

data = the values (4 * count bytes); meta = degree, count and indices.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from peerlearn.codecs.message import Payload

_HEAD = struct.Struct("<iI")
_MAX_INDEX = 2**31 - 1


def pack_sparse(indices: np.ndarray, values: np.ndarray) -> bytes:
    """int32 indices then float32 values (no header): the raw sparse body."""
    idx = np.asarray(indices).reshape(-1)
    vals = np.asarray(values).reshape(-1)
    if idx.size != vals.size:
        raise ValueError(f"{idx.size} indices but {vals.size} values")
    if idx.size and (idx.min() < 0 or idx.max() > _MAX_INDEX):
        raise ValueError("sparse indices must lie in [0, 2**31)")
    return idx.astype("<i4").tobytes() + np.ascontiguousarray(vals, dtype="<f4").tobytes()


def unpack_sparse(buf: bytes | memoryview, count: int, offset: int = 0) -> tuple[np.ndarray, ...]:
    """Inverse of ``pack_sparse`` for ``count`` entries: (int64 indices, float32 values)."""
    if len(buf) - offset != 8 * count:
        raise ValueError(f"sparse body of {len(buf) - offset} bytes does not hold {count} entries")
    idx = np.frombuffer(buf, dtype="<i4", count=count, offset=offset).astype(np.int64)
    vals = np.frombuffer(buf, dtype="<f4", count=count, offset=offset + 4 * count)
    return idx, vals.astype(np.float32)


@dataclass(eq=False, slots=True)
class SparseVector(Payload):
    """Some coordinates of a vector (any order, no duplicates) plus the sender's degree."""

    indices: np.ndarray
    values: np.ndarray
    degree: int = 0

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        if self.indices.size != self.values.size:
            raise ValueError(f"{self.indices.size} indices but {self.values.size} values")

    @property
    def data_bytes(self) -> int:
        return 4 * self.values.size

    @property
    def meta_bytes(self) -> int:
        return _HEAD.size + 4 * self.indices.size

    def encode(self) -> bytes:
        return _HEAD.pack(self.degree, self.indices.size) + pack_sparse(self.indices, self.values)

    def to_state(self) -> dict:
        """For checkpoints (``sim/state.py``): the fields, arrays as they are."""
        return {"indices": self.indices, "values": self.values, "degree": self.degree}

    @classmethod
    def from_state(cls, state: dict) -> SparseVector:
        return cls(state["indices"], state["values"], int(state["degree"]))

    @classmethod
    def decode(cls, buf: bytes) -> SparseVector:
        if len(buf) < _HEAD.size:
            raise ValueError(f"sparse payload of {len(buf)} bytes is malformed")
        degree, count = _HEAD.unpack_from(buf)
        idx, vals = unpack_sparse(buf, count, _HEAD.size)
        return cls(idx, vals, degree)
