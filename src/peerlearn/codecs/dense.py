"""Dense float32 model vectors, optionally with the sender's degree (for Metropolis-Hastings)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from peerlearn.codecs.message import Payload

_DEGREE = struct.Struct("<i")


@dataclass(eq=False, slots=True)
class DenseVector(Payload):
    """A whole float32 vector, sent raw little-endian, plus the sender's degree as int32."""

    values: torch.Tensor
    degree: int = 0

    @property
    def data_bytes(self) -> int:
        return 4 * self.values.numel()

    @property
    def meta_bytes(self) -> int:
        return _DEGREE.size

    def encode(self) -> bytes:
        arr = self.values.detach().to(torch.float32).cpu().numpy().astype("<f4", copy=False)
        return _DEGREE.pack(self.degree) + arr.tobytes()

    def to_state(self) -> dict:
        """For checkpoints (``sim/state.py``): the fields, arrays as they are."""
        return {"values": self.values, "degree": self.degree}

    @classmethod
    def from_state(cls, state: dict) -> DenseVector:
        return cls(state["values"], int(state["degree"]))

    @classmethod
    def decode(cls, buf: bytes) -> DenseVector:
        if len(buf) < _DEGREE.size or (len(buf) - _DEGREE.size) % 4:
            raise ValueError(f"dense vector payload of {len(buf)} bytes is malformed")
        (degree,) = _DEGREE.unpack_from(buf)
        arr = np.frombuffer(buf, dtype="<f4", offset=_DEGREE.size).astype(np.float32)
        return cls(torch.from_numpy(arr.copy()), degree)
