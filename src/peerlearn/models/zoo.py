"""The model zoo: every model is a template module plus a flat-vector layout.

A ``ModelSpec`` (``models/spec.py``) is shared by all nodes of a run. A model is a builder
``(input_shape, num_classes, **params) -> nn.Module``; any module whose state is parameters and
whose forward runs under ``vmap`` works (``models/generic.py`` checks it when it is built).
GN-LeNet, the MLP and matrix factorization add hand-batched fast paths (``models/hooks.py``);
ResNet-8 (``models/resnet8.py``) has none.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.components import MODELS, ModelEntry
from peerlearn.models.generic import model_from_module
from peerlearn.models.spec import ModelSpec, Task
from peerlearn.registry import resolve

__all__ = ["MODELS", "ModelSpec", "Task", "build_model", "model_shape"]


class GNLeNet(nn.Module):
    """Conv-GroupNorm-ReLU-MaxPool x3 then a linear head.

    GroupNorm instead of BatchNorm: no running statistics (buffers), and it behaves well with
    small, non-IID local batches, which is why DL papers (DivShare, JWINS) use it.
    """

    # compute.fused: a function (h, groups, gamma, beta, eps) -> relu(max_pool2d(group_norm(h)))
    # that replaces those three ops in the batched hooks (compute/fused.py sets it on a copy)
    fused_block: Callable[..., torch.Tensor] | None = None
    # and a function (x (J, B, C, H, W), weight (J, 32, C, 5, 5), bias (J, 32)) -> the first
    # grouped convolution's channels-last output, or None where it does not apply
    fused_conv_first: Callable[..., torch.Tensor | None] | None = None
    # and for J models on a shared batch x (B, C, H, W) without gradients, a function (x, weight,
    # bias, groups, gamma, beta, eps) -> the whole first block's output, or None
    fused_first_block: Callable[..., torch.Tensor | None] | None = None

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.gn1 = nn.GroupNorm(2, 32)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.gn2 = nn.GroupNorm(2, 32)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.gn3 = nn.GroupNorm(2, 64)
        # Three 2x2 poolings (floor), 'same' convolutions keep the size in between.
        self.fc = nn.Linear(64 * (height // 8) * (width // 8), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.gn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.gn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.gn3(self.conv3(x))), 2)
        return self.fc(x.flatten(1))

    def stacked(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J models at once: ``p`` holds (J, *shape) parameters, ``x`` is (J, B, C, H, W).

        The J models' channels sit side by side and every convolution is one grouped convolution
        (groups = J); each model's GroupNorm groups are contiguous channel blocks, so GroupNorm
        over 2J groups normalizes exactly per model.
        """
        j, b = x.shape[:2]
        if self.fused_conv_first is not None:
            h = self.fused_conv_first(x, p["conv1.weight"], p["conv1.bias"])
            if h is not None:
                return self._side_by_side(p, h, j, first_groups=j, done=1)
        h = x.transpose(0, 1).reshape(b, j * x.shape[2], *x.shape[3:])
        return self._side_by_side(p, h, j, first_groups=j)

    def stacked_shared(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J models on one batch ``x`` (B, C, H, W) that all of them see (a shared test set):
        the first convolution is a single dense one with J x 32 output channels, and ``x`` is
        not copied once per model."""
        j = p["conv1.weight"].shape[0]
        if self.fused_first_block is not None:
            gn = self.gn1
            h = self.fused_first_block(
                x,
                p["conv1.weight"],
                p["conv1.bias"],
                gn.num_groups * j,
                p["gn1.weight"].reshape(-1),
                p["gn1.bias"].reshape(-1),
                gn.eps,
            )
            if h is not None:
                return self._side_by_side(p, h, j, first_groups=1, done=2)
        return self._side_by_side(p, x, j, first_groups=1)

    def _side_by_side(
        self,
        p: dict[str, torch.Tensor],
        h: torch.Tensor,
        j: int,
        first_groups: int,
        done: int = 0,
    ) -> torch.Tensor:
        """From ``h``, the input, or the output of the first convolution (``done`` = 1) or of
        the whole first block (``done`` = 2)."""
        b = h.shape[0]
        if h.device.type == "cpu":  # channels-last is oneDNN's fast layout; cuDNN prefers NCHW
            h = h.contiguous(memory_format=torch.channels_last)
        for k in (2, 3) if done == 2 else (1, 2, 3):
            if k > 1 or done == 0:
                w = p[f"conv{k}.weight"]
                w = w.reshape(j * w.shape[1], *w.shape[2:])
                if self.fused_block is not None and h.device.type == "cpu":
                    # oneDNN wants channels-last filters too: converted here once, it does
                    # not convert them again in the backward, and their gradient comes back
                    # channels-last, which the SGD update reads in place (no copy back)
                    w = w.contiguous(memory_format=torch.channels_last)
                groups = first_groups if k == 1 else j
                h = F.conv2d(h, w, p[f"conv{k}.bias"].reshape(-1), padding=2, groups=groups)
            gn = getattr(self, f"gn{k}")
            norm_groups = gn.num_groups * j
            gamma, beta = p[f"gn{k}.weight"].reshape(-1), p[f"gn{k}.bias"].reshape(-1)
            if self.fused_block is not None:
                h = self.fused_block(h, norm_groups, gamma, beta, gn.eps)
                continue
            # ReLU after the pooling: max and ReLU commute exactly (values and gradients), and
            # ReLU then touches a quarter of the elements
            h = F.relu(F.max_pool2d(F.group_norm(h, norm_groups, gamma, beta, gn.eps), 2))
        h = h.reshape(b, j, -1).transpose(0, 1)  # (J, B, features), each model's flatten order
        return torch.baddbmm(p["fc.bias"].unsqueeze(1), h, p["fc.weight"].transpose(1, 2))


class MatrixFactorization(nn.Module):
    """Rating = <user factors, item factors>; input (B, 2) int64 [user, item]."""

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, factors)
        self.item = nn.Embedding(n_items, factors)
        nn.init.uniform_(self.user.weight, -0.05, 0.05)
        nn.init.uniform_(self.item.weight, -0.05, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.user(x[..., 0]) * self.item(x[..., 1])).sum(-1)

    def sgd_step_rows(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, lr: float
    ) -> torch.Tensor:
        """One plain SGD step of J models in place, touching only the rows in the batch.

        With the mean squared error, the gradient of every row not in the batch is exactly zero,
        so updating only the batch's rows equals the dense step; it avoids reading and writing
        all J x (users + items) x F values every step. Returns each model's loss (J,).
        """
        users, items = p["user.weight"], p["item.weight"]
        j, b = x.shape[:2]
        rows = torch.arange(j, device=x.device).unsqueeze(1).expand(j, b)
        u, i = users[rows, x[..., 0]], items[rows, x[..., 1]]  # (J, B, F) copies
        err = (u * i).sum(-1) - y
        scale = (2.0 / b) * err.unsqueeze(-1)  # d mean((pred - y)^2) / d pred
        users.index_put_((rows, x[..., 0]), -lr * scale * i, accumulate=True)
        items.index_put_((rows, x[..., 1]), -lr * scale * u, accumulate=True)
        return (err**2).mean(1)

    def stacked(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J models at once: (J, rows, F) embeddings, ``x`` (J, B, 2) -> (J, B) ratings."""
        users, items = p["user.weight"], p["item.weight"]
        f = users.shape[-1]
        u = users.gather(1, x[..., 0].unsqueeze(-1).expand(-1, -1, f))
        i = items.gather(1, x[..., 1].unsqueeze(-1).expand(-1, -1, f))
        return (u * i).sum(-1)


class MLP(nn.Module):
    """Flatten, ReLU hidden layers, linear head."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x)

    def stacked(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J models at once with batched matrix products; ``x`` is (J, B, ...).

        Each layer's weight gradient comes out in the weight's own (J, out, in) layout
        (``_StackedLinear``), so the trainer's update reads it contiguously."""
        return self._tail(p, x.flatten(2), 0, _StackedLinear.apply)

    def stacked_shared(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """J models on one batch ``x`` (B, ...) they all see: the first layer is a single
        matrix product with J x width outputs."""
        first = "hidden.0" if len(self.hidden) else "out"
        w, bias = p[f"{first}.weight"], p[f"{first}.bias"]
        j, width = w.shape[:2]
        h = F.linear(x.flatten(1), w.reshape(j * width, -1), bias.reshape(-1))
        h = h.view(-1, j, width).transpose(0, 1)  # (J, B, width)
        if not len(self.hidden):
            return h
        return self._tail(p, F.relu(h), 1)

    def _tail(
        self,
        p: dict[str, torch.Tensor],
        h: torch.Tensor,
        start: int,
        linear: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        linear = linear or _stacked_linear
        for k in range(start, len(self.hidden)):
            h = F.relu(linear(h, p[f"hidden.{k}.weight"], p[f"hidden.{k}.bias"]))
        return linear(h, p["out.weight"], p["out.bias"])


def _stacked_linear(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """J linear layers at once: h (J, B, in), w (J, out, in), bias (J, out) -> (J, B, out)."""
    return torch.baddbmm(bias.unsqueeze(1), h, w.mT)


class _StackedLinear(torch.autograd.Function):
    """``_stacked_linear`` with the weight gradient computed as ``grad.mT @ h``, (J, out, in)
    like the weight, where autograd computes ``(h.mT @ grad).mT``: the same numbers (a product
    and its transpose; bit for bit on this CPU for every shape tried, and
    tests/test_compute.py checks the trainer's steps against autograd's), but no transposed
    (J, out, in) gradient for the update to read element by element, which cost more than
    the products themselves. The input and bias gradients are autograd's own expressions."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        ctx.bias_shape = bias.unsqueeze(1).shape
        return _stacked_linear(h, w, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w = ctx.saved_tensors
        grad_h = grad.bmm(w) if ctx.needs_input_grad[0] else None  # as baddbmm's backward
        grad_w = grad.mT.bmm(h) if ctx.needs_input_grad[1] else None
        # the broadcast bias's gradient as autograd reduces it (sum_to), then unsqueeze's
        grad_b = grad.sum_to_size(ctx.bias_shape).squeeze(1) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b


def _require_classes(name: str, num_classes: int | None) -> int:
    if num_classes is None or num_classes < 2:
        raise ValueError(f"model {name!r} needs num_classes >= 2, got {num_classes!r}")
    return num_classes


def _gn_lenet(input_shape: tuple[int, ...], num_classes: int | None, **_: Any) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(
            f"model 'gn_lenet' needs image input (channels, height, width), got {input_shape}"
        )
    c, h, w = input_shape
    if c < 1 or h < 8 or w < 8:
        raise ValueError(
            f"model 'gn_lenet' needs >= 1 channel and images >= 8x8, got {input_shape}"
        )
    return GNLeNet(c, h, w, _require_classes("gn_lenet", num_classes))


def _matrix_factorization(
    input_shape: tuple[int, ...], info: dict, factors: int, **_: Any
) -> nn.Module:
    if tuple(input_shape) != (2,):
        raise ValueError(
            f"model 'matrix_factorization' needs (user, item) pairs, input_shape (2,), "
            f"got {input_shape}"
        )
    sizes = {}
    for key in ("n_users", "n_items"):
        value = info.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"model 'matrix_factorization' needs dataset info {key!r} (a positive int), "
                f"got {value!r}"
            )
        sizes[key] = value
    if factors < 1:
        raise ValueError(f"model 'matrix_factorization' needs factors >= 1, got {factors}")
    return MatrixFactorization(sizes["n_users"], sizes["n_items"], factors)


def _mlp(
    input_shape: tuple[int, ...], num_classes: int | None, hidden: tuple[int, ...], **_: Any
) -> nn.Module:
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"model 'mlp' needs a non-empty input shape, got {input_shape}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"model 'mlp' needs positive hidden sizes, got {hidden}")
    return MLP(math.prod(input_shape), tuple(hidden), _require_classes("mlp", num_classes))


def _entry(name: str) -> tuple[ModelEntry, Callable[..., nn.Module]]:
    """The registered model ``name`` and its builder (ValueError naming the allowed ones)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    entry = MODELS.get(name)
    return entry, resolve(entry.builder)


# built-in models whose vmap path and hooks tests/test_models.py and tests/test_compute.py pin:
# they skip the batched build-time probe, so a deploy node process does not pay its first vmap
PINNED_BY_TESTS = frozenset({"gn_lenet", "matrix_factorization", "mlp"})


def model_shape(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int | None,
    info: dict,
    hidden: tuple[int, ...] = (64,),
    factors: int = 20,
    **params: Any,
) -> nn.Module:
    """The named model's module on the meta device: its shapes, no memory (and no RNG draws).

    ``params``: the keys of a plugin model's own config section."""
    _, builder = _entry(name)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return builder(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            info=info,
            hidden=tuple(hidden),
            factors=factors,
            **params,
        )


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int | None,
    info: dict,
    seed: int,
    hidden: tuple[int, ...] = (64,),
    factors: int = 20,
    sample: torch.Tensor | None = None,
    **params: Any,
) -> ModelSpec:
    """Build the named model, initialised deterministically from ``seed``.

    The global torch RNG is left untouched (init runs inside ``fork_rng``), so building a model
    never shifts the randomness of anything else in the run. The module is then checked and
    probed batched (``models/generic.py``; ``sample``: a few real inputs for the probe), so a
    model that cannot train batched across nodes fails here with one line.
    """
    entry, builder = _entry(name)
    # Seed only the CPU generator (torch.manual_seed would also reseed CUDA generators, which
    # fork_rng(devices=[]) does not restore); modules are built on the CPU.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        module = builder(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            info=info,
            hidden=tuple(hidden),
            factors=factors,
            **params,
        )
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"model {name!r}: its builder returned {type(module).__name__}, not a torch.nn.Module"
        )
    task: Task = entry.task  # type: ignore[assignment]
    return model_from_module(
        name,
        task,
        module,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        sample=sample,
        probe=name not in PINNED_BY_TESTS,
    )
