"""A two-layer tanh network as a plain ``torch.nn.Module``, with a config key of its own.

peerlearn trains every node's copy at once through ``torch.func`` (vmap of a functional call),
so the module needs nothing beyond ``forward``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field
from torch import nn

from peerlearn.api import ModelConfig, register_model


class TanhMLPConfig(ModelConfig):
    """``[model]`` of ``tanh_mlp``: the shared keys plus ``width``."""

    width: int = Field(default=32, gt=0, le=4096)


class TanhMLP(nn.Module):
    def __init__(self, in_features: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.body(x)


@register_model(
    "tanh_mlp",
    config=TanhMLPConfig,
    inputs=["vector", "image"],
    size_keys=["width"],
    description="two tanh layers of `width` units (example plugin)",
)
def build(*, input_shape: tuple[int, ...], num_classes: int | None, width: int, **_: Any):
    if num_classes is None:
        raise ValueError("model 'tanh_mlp' needs a classification dataset")
    return TanhMLP(math.prod(input_shape), width, num_classes)
