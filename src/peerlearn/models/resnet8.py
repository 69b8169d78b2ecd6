"""ResNet-8 with GroupNorm for 32x32 images (CIFAR-10), written as a plain ``nn.Module``.

He et al.'s CIFAR ResNet with one basic block per stage (6n + 2 layers, n = 1): a 3x3 stem
convolution with 16 channels, three stages of one residual block at 16, 32 and 64 channels
(the second and third halve the resolution), global average pooling and a linear head.
GroupNorm with 2 groups replaces BatchNorm, as Hsieh et al. (2020) do for non-IID
decentralized training: it has no running statistics, so a node's model is its parameters.
78,042 parameters for 3x32x32 inputs and 10 classes.

It has no hand-batched hooks (``models/hooks.py``): it trains batched across nodes through the
generic ``torch.func`` path, which is the point of it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GN_GROUPS = 2
WIDTHS = (16, 32, 64)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # no bias: the GroupNorm right after has its own shift
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-GN-ReLU-conv-GN plus the shortcut, then ReLU; a 1x1 projection when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.gn1 = nn.GroupNorm(GN_GROUPS, cout)
        self.conv2 = _conv3x3(cout, cout)
        self.gn2 = nn.GroupNorm(GN_GROUPS, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(GN_GROUPS, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.gn1(self.conv1(x)))
        h = self.gn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet8(nn.Module):
    """Stem, three one-block stages, global average pooling, linear head."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        self.stem = _conv3x3(in_channels, widths[0])
        self.gn = nn.GroupNorm(GN_GROUPS, widths[0])
        blocks, cin = [], widths[0]
        for k, width in enumerate(widths):
            blocks.append(BasicBlock(cin, width, stride=1 if k == 0 else 2))
            cin = width
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.gn(self.stem(x)))
        h = self.stages(h)
        return self.fc(h.mean(dim=(-2, -1)))


def build(input_shape: tuple[int, ...], num_classes: int | None, **_: Any) -> nn.Module:
    """The model builder: (channels, height, width) images, ``num_classes`` >= 2."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model 'resnet8' needs image input (channels, height, width), got {input_shape}"
        )
    c, h, w = input_shape
    if c < 1 or h < 4 or w < 4:
        raise ValueError(f"model 'resnet8' needs >= 1 channel and images >= 4x4, got {input_shape}")
    if num_classes is None or num_classes < 2:
        raise ValueError(f"model 'resnet8' needs num_classes >= 2, got {num_classes!r}")
    return ResNet8(c, num_classes)
