"""``ModelSpec``: one run's model, shared by all nodes (architecture, task, flat layout, hooks)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from peerlearn.models.hooks import NO_FAST_PATHS, FastPaths
from peerlearn.models.layout import ParamLayout

Task = Literal["classification", "regression"]


@dataclass
class ModelSpec:
    """One run's model: architecture (template module), task and flat layout.

    Nodes hold only flat vectors; the template module gives the architecture, and ``forward``
    runs it functionally on any vector, so the same code serves one node, many nodes under
    ``vmap``, and the reference nn.Module path. ``hooks`` are the module's optional
    hand-batched fast paths (``models/hooks.py``), looked up once here.
    """

    name: str
    task: Task
    module: nn.Module
    layout: ParamLayout
    hooks: FastPaths | None = None  # None: those the module implements
    # one model's image batches go to forward in channels-last memory on a CPU (oneDNN's fast
    # layout): set by the build-time probe when the forward accepts it with the same outputs
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.hooks is None:
            self.hooks = FastPaths.of(self.module)

    def without_hooks(self) -> ModelSpec:
        """The same model on the generic ``vmap`` path only (benchmarks, tests)."""
        return replace(self, hooks=NO_FAST_PATHS)

    def init_vector(self) -> torch.Tensor:
        """The flat initial parameters (identical on every node)."""
        return self.layout.flatten(self.module)

    def forward(self, vec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Output of the model with parameters ``vec`` on the batch ``x`` (vmap/grad safe)."""
        return functional_call(self.module, self.layout.unflatten(vec), (x,))

    def stacked_forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs of J models (``params`` (J, P)) on their own batches (``x`` (J, B, ...)).

        The module's ``stacked`` hook when it has one, else ``vmap`` of ``forward`` (for one
        model a plain ``forward``, channels-last if ``channels_last``: 1.3-1.7x faster for
        convolutional models on a CPU, docs/models.md).
        Ordinary autograd works through it, so one backward pass gives every model its gradient.
        """
        assert self.hooks is not None
        if self.hooks.stacked is not None:
            return self.hooks.stacked(self.layout.unflatten(params), x)
        if params.shape[0] == 1:  # one model (the evaluator's CPU default for heavy models):
            return self.forward(params[0], self._layout(x[0])).unsqueeze(0)  # no vmap overhead
        return torch.func.vmap(self.forward)(params, x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4 and x.device.type == "cpu":
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def stacked_forward_shared(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs of J models on one batch ``x`` (B, ...) that all of them see; the module's
        ``stacked_shared`` hook when it has one, else ``x`` broadcast to every model."""
        assert self.hooks is not None
        if self.hooks.stacked_shared is not None:
            return self.hooks.stacked_shared(self.layout.unflatten(params), x)
        return self.stacked_forward(params, x.expand(params.shape[0], *x.shape))

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (classification) or mean squared error (regression)."""
        if self.task == "classification":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, y)
