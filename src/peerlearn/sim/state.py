"""State trees: what ``state_dict()`` methods return, turned into JSON plus NumPy arrays.

A state tree is built from a closed set of types, never arbitrary objects (no pickle):

- ``None``, ``bool``, ``int``, ``float`` (inf and nan included), ``str``;
- ``list``, ``tuple`` and ``dict`` (exactly these types; any keys that are themselves trees, in
  insertion order, which matters: some sums run in arrival order);
- ``numpy.ndarray`` (numeric dtypes) and ``torch.Tensor`` (stored on the CPU, restored on the CPU);
- the wire payloads of ``codecs`` (each through its own ``to_state()``/``from_state()``).

``encode`` gives a JSON-able tree and a dict of arrays (for ``np.savez``); ``decode`` is its
inverse. Arrays, tensors and payloads are stored once per object: two references to one object
(a payload sent to r peers, a model snapshot held both by a queued message and by its sender)
come back as two references to one object, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from peerlearn.codecs.message import Payload
from peerlearn.components import PAYLOADS as PAYLOAD_REGISTRY


class _PayloadClasses:
    """The registered payload classes a state tree may hold, by the class name stored."""

    def __init__(self) -> None:
        self._version = -1
        self._by_name: dict[str, type[Payload]] = {}

    def get(self, name: str) -> type[Payload] | None:
        if PAYLOAD_REGISTRY.version != self._version:
            entries = PAYLOAD_REGISTRY.entries()  # the built-ins, registered on first use
            self._by_name = {(c := e.payload_class()).__name__: c for e in entries}
            self._version = PAYLOAD_REGISTRY.version
        return self._by_name.get(name)


PAYLOADS = _PayloadClasses()
_RESERVED = ("__nd__", "__pt__", "__tuple__", "__dict__", "__payload__", "__float__")


class StateError(ValueError):
    """A state tree that cannot be encoded or decoded."""


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        # id(object) -> (object, encoded node): the object is kept alive, so ids stay unique
        self._memo: dict[int, tuple[Any, Any]] = {}
        self.payloads: list[Any] = []

    def _key(self) -> str:
        return f"a{len(self.arrays)}"

    def enc(self, obj: Any) -> Any:
        t = type(obj)
        if obj is None or t is bool or t is int or t is str:
            return obj
        if t is float:
            return obj if obj == obj and obj not in (np.inf, -np.inf) else {"__float__": repr(obj)}
        if t is list:
            return [self.enc(v) for v in obj]
        if t is tuple:
            return {"__tuple__": [self.enc(v) for v in obj]}
        if t is dict:
            if all(type(k) is str and k not in _RESERVED for k in obj):
                return {k: self.enc(v) for k, v in obj.items()}
            return {"__dict__": [[self.enc(k), self.enc(v)] for k, v in obj.items()]}
        if isinstance(obj, np.generic):
            return self.enc(obj.item())
        memo = self._memo.get(id(obj))
        if memo is not None:
            return memo[1]
        if t is np.ndarray:
            if obj.dtype.hasobject:
                raise StateError("object arrays cannot be stored")
            key = self._key()
            self.arrays[key] = obj
            node: Any = {"__nd__": key}
        elif isinstance(obj, torch.Tensor):
            key = self._key()
            self.arrays[key] = obj.detach().cpu().numpy()
            node = {"__pt__": key}
        elif isinstance(obj, Payload) and PAYLOADS.get(t.__name__) is t:
            index = len(self.payloads)
            self.payloads.append(None)  # its slot, taken before its arrays are encoded
            self.payloads[index] = [t.__name__, self.enc(obj.to_state())]
            node = {"__payload__": index}
        else:
            raise StateError(f"cannot store a {t.__module__}.{t.__qualname__} in a checkpoint")
        self._memo[id(obj)] = (obj, node)
        return node


def encode(tree: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON-able tree, arrays by key) of a state tree."""
    e = _Encoder()
    root = e.enc(tree)
    return {"root": root, "payloads": e.payloads}, e.arrays


class _Decoder:
    def __init__(self, arrays: Any, payloads: list) -> None:
        self.arrays = arrays
        self.payload_states = payloads
        self.memo: dict[tuple[str, Any], Any] = {}

    def _array(self, key: str) -> np.ndarray:
        try:
            arr = self.arrays[key]
        except KeyError:
            raise StateError(f"array {key!r} is missing") from None
        return np.array(arr)  # a private, writable copy

    def dec(self, node: Any) -> Any:
        t = type(node)
        if node is None or t in (bool, int, float, str):
            return node
        if t is list:
            return [self.dec(v) for v in node]
        if t is not dict:
            raise StateError(f"unexpected {t.__name__} in a state tree")
        if len(node) == 1:
            ((tag, value),) = node.items()
            if tag == "__float__":
                return float(value)
            if tag == "__tuple__":
                return tuple(self.dec(v) for v in value)
            if tag == "__dict__":
                return {self.dec(k): self.dec(v) for k, v in value}
            if tag in ("__nd__", "__pt__", "__payload__"):
                key = (tag, value)
                if key not in self.memo:
                    self.memo[key] = self._make(tag, value)
                return self.memo[key]
        return {k: self.dec(v) for k, v in node.items()}

    def _make(self, tag: str, value: Any) -> Any:
        if tag == "__nd__":
            return self._array(value)
        if tag == "__pt__":
            return torch.from_numpy(self._array(value))
        name, state = self.payload_states[value]
        cls = PAYLOADS.get(name)
        if cls is None:
            raise StateError(f"unknown payload type {name!r}")
        return cls.from_state(self.dec(state))


def decode(tree: Any, arrays: Any) -> Any:
    """The state tree ``encode`` was given (arrays: any mapping of key -> array)."""
    try:
        return _Decoder(arrays, tree["payloads"]).dec(tree["root"])
    except (KeyError, TypeError, IndexError) as exc:
        raise StateError(f"malformed state tree: {exc!r}") from None


def rng_state(rng: np.random.Generator) -> dict:
    """A NumPy generator's full state (plain ints and strings)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
