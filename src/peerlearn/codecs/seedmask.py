"""Random masks sent as a seed: random sub-sampling's messages carry no indices at all.

Sender and receiver regenerate the same Bernoulli(fraction) mask over the n coordinates from a
64-bit seed (numpy's PCG64, whose stream numpy keeps stable), so only the seed, the fraction and
the selected values travel.

Wire format (little-endian)::

    int32 degree | uint64 seed | float64 fraction | uint32 n | float32 values[popcount(mask)]

data = the values; meta = the 24 header bytes. The fraction travels as float64 so the receiver's
comparison ``u < fraction`` is bit-identical to the sender's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from peerlearn.codecs.message import Payload

_HEAD = struct.Struct("<iQdI")


def bernoulli_mask(seed: int, n: int, fraction: float) -> np.ndarray:
    """The mask every node derives from (seed, n, fraction): each entry kept w.p. fraction."""
    return np.random.Generator(np.random.PCG64(seed)).random(n) < fraction


def mask_indices(seed: int, n: int, fraction: float) -> np.ndarray:
    """Sorted int64 indices of ``bernoulli_mask``."""
    return np.flatnonzero(bernoulli_mask(seed, n, fraction))


@dataclass(eq=False, slots=True)
class SeedMaskVector(Payload):
    """The values of a vector at the coordinates of a seeded mask, in index order."""

    seed: int
    fraction: float
    n: int
    values: np.ndarray
    degree: int = 0
    _indices: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        if not 0 <= self.seed < 2**64 or not 0 <= self.n < 2**32:
            raise ValueError("seed must fit in uint64 and n in uint32")

    @classmethod
    def of(cls, x: np.ndarray, seed: int, fraction: float, degree: int = 0) -> SeedMaskVector:
        """The payload sampling the flat vector ``x`` with the mask of ``seed``."""
        x = np.asarray(x).reshape(-1)
        idx = mask_indices(seed, x.size, fraction)
        payload = cls(seed, fraction, x.size, x[idx], degree)
        payload._indices = idx
        return payload

    def indices(self) -> np.ndarray:
        """Where the values go, regenerated from the seed (once per payload object)."""
        if self._indices is None:
            idx = mask_indices(self.seed, self.n, self.fraction)
            if idx.size != self.values.size:
                raise ValueError(
                    f"mask selects {idx.size} coordinates, payload has {self.values.size}"
                )
            self._indices = idx
        return self._indices

    @property
    def data_bytes(self) -> int:
        return 4 * self.values.size

    @property
    def meta_bytes(self) -> int:
        return _HEAD.size

    def encode(self) -> bytes:
        head = _HEAD.pack(self.degree, self.seed, self.fraction, self.n)
        return head + np.ascontiguousarray(self.values, dtype="<f4").tobytes()

    def to_state(self) -> dict:
        """For checkpoints (``sim/state.py``): the fields (indices come back from the seed)."""
        return {
            "seed": self.seed,
            "fraction": self.fraction,
            "n": self.n,
            "values": self.values,
            "degree": self.degree,
        }

    @classmethod
    def from_state(cls, state: dict) -> SeedMaskVector:
        return cls(
            int(state["seed"]),
            float(state["fraction"]),
            int(state["n"]),
            state["values"],
            int(state["degree"]),
        )

    @classmethod
    def decode(cls, buf: bytes) -> SeedMaskVector:
        if len(buf) < _HEAD.size or (len(buf) - _HEAD.size) % 4:
            raise ValueError(f"seed-mask payload of {len(buf)} bytes is malformed")
        degree, seed, fraction, n = _HEAD.unpack_from(buf)
        values = np.frombuffer(buf, dtype="<f4", offset=_HEAD.size).astype(np.float32)
        return cls(seed, fraction, n, values, degree)
