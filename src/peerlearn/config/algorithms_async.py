"""Config sections of the asynchronous algorithms (DivShare, Swift, AD-PSGD).

Defaults are the DivShare artifact's values (see docs and ../shared/specs/divshare.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

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
