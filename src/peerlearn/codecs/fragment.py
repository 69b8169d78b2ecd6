"""One fragment of a model: its id and its values, float32 little-endian.

The receiver rebuilds the fragment's coordinates from the partition it shares with every other
node (fixed for the run, drawn from the run seed), so only the id travels, never the indices. That
is what makes DivShare's traffic per iteration r x model size whatever the number of fragments.
A whole model is fragment 0 of a one-fragment partition (Swift, AD-PSGD). An empty fragment
(no values) is legal: AD-PSGD uses it to decline an exchange.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from peerlearn.codecs.message import Payload

#: fragment id (uint32), number of float32 values that follow (uint32)
_META = struct.Struct("<II")


def numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """A NumPy array sharing a float32 CPU tensor's memory, or None (other devices or dtypes).

    Fragments are small slices (hundreds to thousands of values), on which a NumPy gather, add
    or divide costs a fraction of the torch dispatch overhead; float32 arithmetic is IEEE in
    both, so results are bit for bit the same.
    """
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.requires_grad:
        return None
    return t.numpy()


@dataclass(eq=False, slots=True)
class FragmentPayload(Payload):
    """Fragment ``fragment`` of the sender's model; ``values`` in the partition's index order."""

    fragment: int
    values: torch.Tensor
    _array: np.ndarray | None = field(default=None, init=False, repr=False)
    #: ``values.numel()``, kept: receivers check it on every arrival
    n_values: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.fragment < 2**32:
            raise ValueError(f"fragment id must fit in uint32, got {self.fragment}")
        if self.values.dim() != 1:
            raise ValueError(f"fragment values must be 1-D, got shape {tuple(self.values.shape)}")
        self.n_values = self.values.numel()

    @classmethod
    def of_array(cls, fragment: int, values: np.ndarray) -> FragmentPayload:
        """A payload over a 1-D float32 NumPy array (shared, not copied), its view already kept."""
        payload = cls(fragment, torch.from_numpy(values))
        payload._array = values
        return payload

    @property
    def data_bytes(self) -> int:
        return 4 * self.n_values

    def array(self) -> np.ndarray | None:
        """``numpy_view(values)``, cached: in a simulation every receiver of the payload asks for
        it (the values are a snapshot nobody writes to)."""
        if self._array is None:
            self._array = numpy_view(self.values)
        return self._array

    @property
    def meta_bytes(self) -> int:
        return _META.size

    def encode(self) -> bytes:
        arr = self.values.detach().to("cpu", torch.float32).numpy().astype("<f4", copy=False)
        return _META.pack(self.fragment, arr.size) + arr.tobytes()

    def to_state(self) -> dict:
        """For checkpoints (``sim/state.py``): the fields, arrays as they are."""
        return {"fragment": self.fragment, "values": self.values}

    @classmethod
    def from_state(cls, state: dict) -> FragmentPayload:
        payload = cls(int(state["fragment"]), state["values"])
        payload.array()  # kept from the start, as ``of_array`` does
        return payload

    @classmethod
    def decode(
        cls,
        buf: bytes,
        *,
        n_fragments: int | None = None,
        expected_len: int | None = None,
    ) -> FragmentPayload:
        """Parse and validate; ``n_fragments``/``expected_len`` check against the partition."""
        if len(buf) < _META.size:
            raise ValueError(f"fragment payload of {len(buf)} bytes is shorter than its header")
        fragment, count = _META.unpack_from(buf)
        if len(buf) != _META.size + 4 * count:
            raise ValueError(
                f"fragment payload announces {count} values ({_META.size + 4 * count} bytes) "
                f"but has {len(buf)} bytes"
            )
        if n_fragments is not None and fragment >= n_fragments:
            raise ValueError(f"fragment id {fragment} out of range for {n_fragments} fragments")
        if expected_len is not None and count != expected_len:
            raise ValueError(f"fragment {fragment} has {count} values, expected {expected_len}")
        arr = np.frombuffer(buf, dtype="<f4", offset=_META.size, count=count).astype(np.float32)
        return cls(fragment, torch.from_numpy(arr.copy()))
