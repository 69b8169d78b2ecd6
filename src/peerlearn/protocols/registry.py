"""Algorithm name -> protocol class, imported on first use."""

from __future__ import annotations

from importlib import import_module

from peerlearn.protocols.base import Protocol

#: name -> "module:Class"; every entry must import (tests check it)
_CATALOG: dict[str, str] = {
    "dpsgd": "peerlearn.protocols.dpsgd:DPSGD",
    "divshare": "peerlearn.protocols.divshare:DivShare",
    "swift": "peerlearn.protocols.swift:Swift",
    "adpsgd": "peerlearn.protocols.adpsgd:ADPSGD",
    "jwins": "peerlearn.protocols.jwins:JWINS",
    "topk": "peerlearn.protocols.sparse:TopK",
    "subsampling": "peerlearn.protocols.sparse:Subsampling",
    "choco": "peerlearn.protocols.choco:Choco",
    # written as one file each against the public protocol API (issue 12)
    "el_oracle": "peerlearn.protocols.epidemic:ELOracle",
    "el_local": "peerlearn.protocols.epidemic:ELLocal",
    "gossip": "peerlearn.protocols.gossip:Gossip",
}


class _Registry(dict):
    """A dict of protocol classes that imports each one when first asked for."""

    def __missing__(self, name: str) -> type[Protocol]:
        if name not in _CATALOG:
            raise KeyError(name)
        module, cls = _CATALOG[name].split(":")
        self[name] = getattr(import_module(module), cls)
        return self[name]

    def load_all(self) -> dict[str, type[Protocol]]:
        return {name: self[name] for name in _CATALOG}


PROTOCOLS = _Registry()


def protocol_class(name: str) -> type[Protocol]:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {sorted(_CATALOG)}") from None
