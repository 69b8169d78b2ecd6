"""Algorithm name -> protocol class, from the algorithm registry (``peerlearn.components``).

``PROTOCOLS`` is a dict that fills itself from the registry on first lookup, so a test may put a
stand-in class under a name (``monkeypatch.setitem(PROTOCOLS, "dpsgd", Spy)``).
"""

from __future__ import annotations

from peerlearn.components import ALGORITHMS
from peerlearn.protocols.base import Protocol
from peerlearn.registry import RegistryError


class _Protocols(dict):
    """Protocol classes by algorithm name, imported when first asked for."""

    def __missing__(self, name: str) -> type[Protocol]:
        try:
            return ALGORITHMS.get(name).protocol_class()
        except RegistryError:
            raise KeyError(name) from None

    def load_all(self) -> dict[str, type[Protocol]]:
        return {name: self[name] for name in ALGORITHMS.names()}


PROTOCOLS = _Protocols()


def protocol_class(name: str) -> type[Protocol]:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {ALGORITHMS.names()}") from None
