"""The flat-vector layout of a model's parameters.

Every node's model is one float32 vector; the layout says which slice of it is which parameter.
All nodes of a run share one layout, so protocols can treat models as plain vectors and the
simulator can stack them into one (nodes x parameters) tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a module's parameters inside one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        """Layout of ``module``'s parameters in ``named_parameters()`` order."""
        # Buffers (e.g. BatchNorm running stats) would be node state outside the vector.
        buffers = [name for name, _ in module.named_buffers()]
        assert not buffers, f"models must not have buffers, found {buffers}"
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        offsets: list[int] = []
        offset = 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(offset)
            offset += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each parameter, in layout order."""
        return tuple(math.prod(s) for s in self.shapes)

    def slices(self) -> dict[str, slice]:
        """Where each parameter lives in the flat vector."""
        return {
            n: slice(o, o + k)
            for n, o, k in zip(self.names, self.offsets, self.sizes(), strict=True)
        }

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """A (numel,) float32 CPU copy of ``module``'s parameters."""
        params = dict(module.named_parameters())
        out = torch.empty(self.numel, dtype=torch.float32)
        for name, sl in self.slices().items():
            out[sl] = params[name].detach().reshape(-1).to("cpu", torch.float32)
        return out

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``vec`` shaped like the parameters.

        Uses ``split`` (not per-parameter slicing) so that, under ``torch.func.grad``, the
        backward pass is one concatenation rather than one full-size zero tensor per parameter.
        """
        if vec.shape[-1] != self.numel:
            raise ValueError(f"vector has {vec.shape[-1]} entries, layout needs {self.numel}")
        parts = vec.split(self.sizes(), dim=-1)
        lead = tuple(vec.shape[:-1])
        return {
            n: part.view(*lead, *shape)
            for n, part, shape in zip(self.names, parts, self.shapes, strict=True)
        }

    def load(self, module: nn.Module, vec: torch.Tensor) -> None:
        """Copy ``vec`` into ``module``'s parameters, in place."""
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(vec).items():
                params[name].copy_(value)
