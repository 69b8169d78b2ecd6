"""Sparse vectors on the wire as raw indices + float32 values (CHOCO-SGD's messages).

``SparseVector`` is the uncompressed baseline format: int32 indices, 8 bytes per sent
coordinate, half of them metadata; int32 is enough for any model here and is what the JWINS
paper's own accounting assumes before Elias coding. ``SparseVector64`` has the reference CHOCO's
int64 indices (its pitfall 6: ``nonzero()`` indices, never cast), 12 bytes per coordinate, for
comparisons at the reference's cost (``algorithm.wire = "reference"``).

Wire format (little-endian)::

    int32 degree | uint32 count | int32 (int64) indices[count] | float32 values[count]

data = the values (4 * count bytes); meta = degree, count and indices.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from peerlearn.codecs.message import Payload

_HEAD = struct.Struct("<iI")
_MAX_INDEX = 2**31 - 1


def pack_sparse(indices: np.ndarray, values: np.ndarray, index_dtype: str = "<i4") -> bytes:
    """Indices (int32, or ``"<i8"``: int64) then float32 values (no header): the sparse body."""
    idx = np.asarray(indices).reshape(-1)
    vals = np.asarray(values).reshape(-1)
    if idx.size != vals.size:
        raise ValueError(f"{idx.size} indices but {vals.size} values")
    if idx.size and (idx.min() < 0 or idx.max() > _MAX_INDEX):
        raise ValueError("sparse indices must lie in [0, 2**31)")
    return idx.astype(index_dtype).tobytes() + np.ascontiguousarray(vals, dtype="<f4").tobytes()


def unpack_sparse(
    buf: bytes | memoryview, count: int, offset: int = 0, index_dtype: str = "<i4"
) -> tuple[np.ndarray, ...]:
    """Inverse of ``pack_sparse`` for ``count`` entries: (int64 indices, float32 values)."""
    width = np.dtype(index_dtype).itemsize
    if len(buf) - offset != (width + 4) * count:
        raise ValueError(f"sparse body of {len(buf) - offset} bytes does not hold {count} entries")
    idx = np.frombuffer(buf, dtype=index_dtype, count=count, offset=offset).astype(np.int64)
    vals = np.frombuffer(buf, dtype="<f4", count=count, offset=offset + width * count)
    return idx, vals.astype(np.float32)


@dataclass(eq=False, slots=True)
class SparseVector(Payload):
    """Some coordinates of a vector (any order, no duplicates) plus the sender's degree."""

    #: how indices travel (a subclass changes only this)
    INDEX_DTYPE = "<i4"

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
        return _HEAD.size + np.dtype(self.INDEX_DTYPE).itemsize * self.indices.size

    def encode(self) -> bytes:
        body = pack_sparse(self.indices, self.values, self.INDEX_DTYPE)
        return _HEAD.pack(self.degree, self.indices.size) + body

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
        idx, vals = unpack_sparse(buf, count, _HEAD.size, cls.INDEX_DTYPE)
        return cls(idx, vals, degree)


@dataclass(eq=False, slots=True)
class SparseVector64(SparseVector):
    """``SparseVector`` with int64 indices, as the reference CHOCO sends them: 12 bytes per
    coordinate (meta 8 + 8 * count)."""

    INDEX_DTYPE = "<i8"
