"""Optional hand-batched fast paths a model module may provide, as typed contracts.

Any ``nn.Module`` trains and evaluates batched across nodes without them: the trainer and the
evaluator run ``torch.func.vmap`` over ``functional_call`` of the module's ``forward``. A module
can make that faster by defining some of the methods below (the built-in GN-LeNet, MLP and
matrix factorization do; docs/models.md says when it pays). Each hook is one ``Protocol``; the
trainer and the evaluator find them only through ``FastPaths.of``, never by name elsewhere.

Shapes: J models (nodes) at once, B samples each. ``p`` maps every parameter name of the
module (``named_parameters()`` order) to a tensor of shape (J, *parameter shape): row j holds
model j's parameters. Hooks must be exact re-writings of the per-model computation: model j's
outputs (and gradients) depend on row j of ``p`` and its own samples only, and equal what
``vmap`` of ``forward`` gives up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

Params = Mapping[str, torch.Tensor]


@runtime_checkable
class StackedForward(Protocol):
    """J models, each on its own batch, in one call.

    ``x`` is (J, B, *input shape); returns (J, B, *output shape), the same as
    ``vmap(forward)``. Ordinary autograd must flow through it to ``p`` (one backward pass of the
    summed per-model losses gives every model its own gradient).
    """

    def stacked(self, p: Params, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StackedSharedForward(Protocol):
    """J models on one batch that all of them see (the shared test set), in one call.

    ``x`` is (B, *input shape), not copied per model; returns (J, B, *output shape). Used
    under ``torch.inference_mode`` only (evaluation), so it need not support autograd.
    """

    def stacked_shared(self, p: Params, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class RowSparseSGD(Protocol):
    """One plain SGD step (no momentum, no weight decay) of J models, in place.

    ``x`` is (J, B, *input shape), ``y`` (J, B) the targets; ``p``'s tensors are views of the
    trainer's parameter rows and must be updated in place to exactly what
    ``p - lr * grad(mean loss over the batch)`` gives (the loss of the model's task). Returns
    each model's mean loss on the batch before the step, (J,). Called under ``torch.no_grad``.
    For models whose gradient touches few parameters per sample (embeddings).
    """

    def sgd_step_rows(
        self, p: Params, x: torch.Tensor, y: torch.Tensor, lr: float
    ) -> torch.Tensor: ...


StackedFn = Callable[[Params, torch.Tensor], torch.Tensor]
RowStepFn = Callable[[Params, torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class FastPaths:
    """The hooks one module provides (bound methods), or None for each it does not."""

    stacked: StackedFn | None = None
    stacked_shared: StackedFn | None = None
    sgd_step_rows: RowStepFn | None = None

    @classmethod
    def of(cls, module: nn.Module) -> FastPaths:
        """The hooks ``module`` implements; the only place that looks them up."""
        return cls(
            stacked=module.stacked if isinstance(module, StackedForward) else None,
            stacked_shared=(
                module.stacked_shared if isinstance(module, StackedSharedForward) else None
            ),
            sgd_step_rows=module.sgd_step_rows if isinstance(module, RowSparseSGD) else None,
        )

    def names(self) -> tuple[str, ...]:
        """Names of the hooks present, e.g. for ``peerlearn list`` or a log line."""
        return tuple(
            name
            for name in ("stacked", "stacked_shared", "sgd_step_rows")
            if getattr(self, name) is not None
        )


NO_FAST_PATHS = FastPaths()
