"""Messages and payloads: what goes on the wire, with exact byte counts.

A message is a fixed binary header followed by its payload's encoded bytes. The simulator never
builds the bytes (it only needs their number); ``Payload.nbytes`` must therefore equal
``len(payload.encode())`` exactly, which the codec tests check.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

#: magic, version, kind id, sender, receiver, iteration, payload length
HEADER = struct.Struct("<2sBBiiqQ")
HEADER_BYTES = HEADER.size
MAGIC = b"PL"
WIRE_VERSION = 1


class PayloadError(ValueError):
    """A received payload that must be dropped; ``reason`` is the counter the runtime bumps."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Payload(ABC):
    """The body of a message. Sizes are split into model data and metadata."""

    @property
    @abstractmethod
    def data_bytes(self) -> int:
        """Bytes that carry model values."""

    @property
    @abstractmethod
    def meta_bytes(self) -> int:
        """Bytes that describe them (indices, degrees, seeds, ...)."""

    @property
    def nbytes(self) -> int:
        return self.data_bytes + self.meta_bytes

    @abstractmethod
    def encode(self) -> bytes:
        """The exact bytes the real runtime sends (``len == nbytes``)."""


@dataclass(eq=False, slots=True)
class Message:
    """One message between two nodes; ``id`` is assigned by the engine."""

    src: int
    dst: int
    kind: str
    iteration: int
    payload: Payload
    id: int = -1
    sent_at: float = 0.0
    _KINDS: ClassVar[dict[str, int]] = {}
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + self.payload.nbytes

    @property
    def data_bytes(self) -> int:
        return self.payload.data_bytes

    @property
    def meta_bytes(self) -> int:
        return HEADER_BYTES + self.payload.meta_bytes

    def encode_header(self, kind_id: int) -> bytes:
        return HEADER.pack(
            MAGIC, WIRE_VERSION, kind_id, self.src, self.dst, self.iteration, self.payload.nbytes
        )
