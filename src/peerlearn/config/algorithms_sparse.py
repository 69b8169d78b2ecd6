"""Config sections of the communication-efficient algorithms (JWINS, TopK, sub-sampling, CHOCO).

Defaults are the JWINS authors' configs (see ../shared/specs/jwins.md) where they exist. The
TopK/sub-sampling fraction is 0.1 (the authors' baseline configs use 0.5). CHOCO-SGD has no
authors' config: gamma = 0.25 for fraction 0.1 comes from a consensus sweep (gamma = 0.5 diverges
at that fraction); see docs/algorithms_sparse.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from peerlearn.components import register_algorithm
from peerlearn.config.sections import Section

Fraction = Annotated[float, Field(gt=0, le=1)]


class JWINSConfig(Section):
    name: Literal["jwins"] = "jwins"
    wavelet: str = "sym2"
    level: Annotated[int, Field(ge=1)] = 4
    alpha_list: list[Fraction] = Field(
        default_factory=lambda: [0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 1.0], min_length=1
    )
    metadata_cap: Fraction = 0.5
    # a fixed alpha instead of the randomized cut-off (ablation)
    fixed_alpha: Fraction | None = None
    float_codec: Literal["auto", "fpzip", "raw"] = "auto"

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, value: str) -> str:
        try:
            import pywt
        except ImportError:  # checked again when the protocol is built
            return value
        if value not in pywt.wavelist(kind="discrete"):
            raise ValueError(
                f"unknown wavelet {value!r}; allowed: discrete PyWavelets names such as "
                "'sym2', 'haar', 'db4' (see pywt.wavelist(kind='discrete'))"
            )
        return value


class TopKConfig(Section):
    name: Literal["topk"] = "topk"
    fraction: Fraction = 0.1
    # fraction >= metadata_cap sends the whole model without indices (reference default 1.0)
    metadata_cap: Fraction = 1.0
    # rank by the accumulated unsent change instead of this round's change (authors: off)
    accumulation: bool = False
    float_codec: Literal["auto", "fpzip", "raw"] = "auto"


class SubsamplingConfig(Section):
    name: Literal["subsampling"] = "subsampling"
    fraction: Fraction = 0.1


class ChocoConfig(Section):
    name: Literal["choco"] = "choco"
    # TopK fraction of q = x - x_hat sent each round
    fraction: Fraction = 0.1
    # consensus step size (the reference's step_size)
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.25
    # false: raw int32 indices + float32 values; true: Elias-gamma indices + float codec
    compress: bool = False
    float_codec: Literal["auto", "fpzip", "raw"] = "auto"
    # unset (= "int32"): exactly round(fraction * N) coordinates, int32 indices. "reference": as
    # decentralizepy's Choco.py: TopK keeps every coordinate tied with the k-th largest |q| (it
    # may send more than k), and uncompressed indices travel as int64 (12 bytes per coordinate).
    # "int32" is stored as unset, so configs that never name the key keep their dumps and hashes.
    wire: Literal["int32", "reference"] | None = None

    @field_validator("wire")
    @classmethod
    def _int32_is_unset(cls, value: str | None) -> str | None:
        return None if value == "int32" else value


SPARSE_ALGORITHMS = (JWINSConfig, TopKConfig, SubsamplingConfig, ChocoConfig)

register_algorithm(
    "jwins",
    config=JWINSConfig,
    protocol="peerlearn.protocols.jwins:JWINS",
    payloads=("partial",),
    synchronous=True,
    dynamic_topology=True,
    description=(
        "JWINS: wavelet-domain partial sharing ranked by accumulated change, random cut-off, "
        "Elias+fpzip wire format"
    ),
)
register_algorithm(
    "topk",
    config=TopKConfig,
    protocol="peerlearn.protocols.sparse:TopK",
    payloads=("partial",),
    synchronous=True,
    dynamic_topology=True,
    description=(
        "partial sharing (TopK/PartialModel): most-changed parameters, Elias-coded indices, "
        "receivers fill the rest with their own values"
    ),
)
register_algorithm(
    "subsampling",
    config=SubsamplingConfig,
    protocol="peerlearn.protocols.sparse:Subsampling",
    payloads=("seedmask",),
    synchronous=True,
    dynamic_topology=True,
    description=(
        "random sub-sampling: a fresh seeded Bernoulli mask each round, the seed sent instead "
        "of indices"
    ),
)
register_algorithm(
    "choco",
    config=ChocoConfig,
    protocol="peerlearn.protocols.choco:Choco",
    payloads=("sparse", "partial", "sparse64"),
    synchronous=True,
    description="CHOCO-SGD: TopK-compressed differences to public copies, consensus step gamma",
)
