"""Algorithm name -> protocol class."""

from __future__ import annotations

from peerlearn.protocols.base import Protocol
from peerlearn.protocols.dpsgd import DPSGD

PROTOCOLS: dict[str, type[Protocol]] = {cls.name: cls for cls in (DPSGD,)}


def protocol_class(name: str) -> type[Protocol]:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {sorted(PROTOCOLS)}") from None
