"""Config sections of the asynchronous algorithms (DivShare, Swift, AD-PSGD).

Defaults are the DivShare artifact's values (see docs and ../shared/specs/divshare.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from peerlearn.components import register_algorithm
from peerlearn.config.sections import Section

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]


class DivShareConfig(Section):
    """Fragments of the model, each to ``fanout`` random peers; stale sends dropped."""

    name: Literal["divshare"] = "divshare"
    fragments: PosInt = 10
    fanout: PosInt = 6
    flush: bool = True


class SwiftConfig(Section):
    """Wait-free push of the full model to ``fanout`` random peers (no dropping)."""

    name: Literal["swift"] = "swift"
    fanout: PosInt = 6


class ADPSGDConfig(Section):
    """AD-PSGD: ``fanout // 2`` pings per iteration, each answered with the newest model.

    ``variant = "atomic"`` runs Lian et al.'s pairwise averaging instead (``fanout // 2``
    sequential exchanges per iteration); ``reply_timeout_s`` bounds how long it waits for a
    reply (a peer that has finished never answers). The artifact variant ignores it.
    """

    name: Literal["adpsgd"] = "adpsgd"
    fanout: PosInt = 6
    variant: Literal["artifact", "atomic"] = "artifact"
    reply_timeout_s: PosFloat = 10.0


ASYNC_ALGORITHMS = (DivShareConfig, SwiftConfig, ADPSGDConfig)

register_algorithm(
    "divshare",
    config=DivShareConfig,
    protocol="peerlearn.protocols.divshare:DivShare",
    payloads=("fragment",),
    kinds=("fragment",),
    description="asynchronous: Ω random fragments to r random peers each, stale sends dropped",
)
register_algorithm(
    "swift",
    config=SwiftConfig,
    protocol="peerlearn.protocols.swift:Swift",
    payloads=("fragment",),
    kinds=("fragment",),
    description="asynchronous wait-free push of the full model to r random peers, no dropping",
)
register_algorithm(
    "adpsgd",
    config=ADPSGDConfig,
    protocol="peerlearn.protocols.adpsgd:ADPSGD",
    payloads=("fragment",),
    kinds=("ping", "reply", "decline"),
    description="asynchronous AD-PSGD: r/2 pings answered with the newest model (or atomic)",
)
