"""D-PSGD's config section and registration (the other built-ins: ``algorithms_async``,
``algorithms_sparse``). Protocols are named as strings, imported when a run builds them."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from peerlearn.components import register_algorithm
from peerlearn.config.sections import Section


class DPSGDConfig(Section):
    """Synchronous D-PSGD: train, send the full model to every neighbour, wait, MH-average."""

    name: Literal["dpsgd"] = "dpsgd"
    # how the model's float32 values travel: unset (= "raw": 4 bytes each, the dense payload),
    # "fpzip" (lossless, fails where fpzip is unusable) or "auto" (fpzip where it is usable,
    # else raw), as JWINS's float_codec. Lossless: models and accuracy are those of "raw", only
    # the bytes change. "raw" is stored as unset, so configs that never name the key keep their
    # dumps and hashes.
    float_codec: Literal["auto", "fpzip", "raw"] | None = None

    @field_validator("float_codec")
    @classmethod
    def _raw_is_unset(cls, value: str | None) -> str | None:
        return None if value == "raw" else value


register_algorithm(
    "dpsgd",
    config=DPSGDConfig,
    protocol="peerlearn.protocols.dpsgd:DPSGD",
    # dense: raw float32 (the default); partial (full share, no indices): float_codec fpzip/auto
    payloads=("dense", "partial"),
    kinds=("model",),
    synchronous=True,
    dynamic_topology=True,
    description="synchronous D-PSGD: full model to every neighbour, Metropolis-Hastings averaging",
)
