"""Any ``nn.Module`` as a peerlearn model, checked when it is built.

The simulator keeps every node's model as one flat float32 vector and trains all nodes at once
through ``torch.func`` (``vmap`` of ``grad`` of ``functional_call``). A module fits when

- its state is parameters only: a buffer (e.g. BatchNorm's running statistics) would be node
  state outside the vector, which protocols never send or average, so it is refused;
- every parameter is trainable floating point (the gradient is taken w.r.t. the whole vector);
- its forward runs under ``vmap``: no data-dependent Python control flow, no ``.item()``, no
  in-place writes of batched values into tensors made inside forward, no random ops (dropout).

``model_from_module`` checks the first two from the module's structure and the last by running
a tiny batched training step and evaluation (2 models x 2 samples) before any run starts, so a
misfit fails with one line naming the model instead of deep inside a run. The same probe checks
the module's optional fast-path hooks (``models/hooks.py``) against the generic path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad_and_value, vmap

from peerlearn.models.layout import ParamLayout
from peerlearn.models.spec import ModelSpec, Task

#: two models of two samples each: enough to exercise every batching rule, cheap for any model
PROBE_MODELS = 2
PROBE_SAMPLES = 2
#: how far a fast-path hook may differ from vmap of forward on the probe (float rounding)
HOOK_RTOL, HOOK_ATOL = 1e-4, 1e-5


def _label(name: str, module: nn.Module) -> str:
    return f"model {name!r} ({type(module).__name__})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def check_structure(name: str, module: nn.Module) -> None:
    """ValueError (one line) if ``module``'s state cannot be one flat trainable vector."""
    label = _label(name, module)
    buffers = [n for n, _ in module.named_buffers()]
    if buffers:
        more = f" (and {len(buffers) - 1} more)" if len(buffers) > 1 else ""
        raise ValueError(
            f"{label}: buffer {buffers[0]!r}{more} is not supported: a node's model must be "
            "parameters only (running statistics would not be shared between nodes); "
            "use GroupNorm or LayerNorm instead of BatchNorm"
        )
    params = list(module.named_parameters())
    if not params:
        raise ValueError(f"{label}: has no parameters")
    for pname, p in params:
        if not p.dtype.is_floating_point:
            raise ValueError(f"{label}: parameter {pname!r} is {p.dtype}; need floating point")
        if not p.requires_grad:
            raise ValueError(
                f"{label}: parameter {pname!r} has requires_grad=False; every parameter is "
                "trained (frozen parameters are not supported)"
            )


def _probe_inputs(input_shape: tuple[int, ...], sample: torch.Tensor | None) -> list[torch.Tensor]:
    """Candidate probe batches: the given sample, else random floats, else zero indices."""
    if sample is not None:
        return [sample[:PROBE_SAMPLES]]
    g = torch.Generator().manual_seed(0)  # its own generator: the global RNG is not touched
    shape = (PROBE_SAMPLES, *input_shape)
    return [torch.randn(shape, generator=g), torch.zeros(shape, dtype=torch.int64)]


def _plain_forward(
    spec: ModelSpec, vec: torch.Tensor, input_shape: tuple[int, ...], sample: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A probe batch the model accepts unbatched, and its output (ValueError if none)."""
    error: BaseException | None = None
    for x in _probe_inputs(input_shape, sample):
        try:
            with torch.no_grad():
                return x, spec.forward(vec, x)
        except Exception as exc:  # the wrong input dtype, or a broken forward
            error = error or exc
    assert error is not None
    raise ValueError(
        f"{_label(spec.name, spec.module)}: forward fails on a batch of input shape "
        f"{(PROBE_SAMPLES, *input_shape)}: {_first_line(error)}"
    )


def _check_output(spec: ModelSpec, out: torch.Tensor, num_classes: int | None) -> None:
    label = _label(spec.name, spec.module)
    if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
        raise ValueError(f"{label}: forward must return one floating-point tensor")
    if spec.task == "classification":
        want = (PROBE_SAMPLES, num_classes) if num_classes else None
        if out.dim() != 2 or (want is not None and tuple(out.shape) != want):
            raise ValueError(
                f"{label}: a classifier's forward must return (batch, num_classes) logits"
                f"{' = ' + str(want) if want else ''}, got shape {tuple(out.shape)}"
            )
    elif out.shape[:1] != (PROBE_SAMPLES,):
        raise ValueError(
            f"{label}: forward must return one row per sample, got shape {tuple(out.shape)}"
        )


def _accepts_channels_last(
    spec: ModelSpec, vec: torch.Tensor, x: torch.Tensor, out: torch.Tensor
) -> bool:
    """Whether an image batch in channels-last memory gives ``forward`` the same outputs (a
    forward that ``view``s its input, for one, cannot take it)."""
    if x.dim() != 4 or not x.is_floating_point():
        return False
    try:
        with torch.no_grad():
            other = spec.forward(vec, x.contiguous(memory_format=torch.channels_last))
        return bool(torch.allclose(other, out, rtol=HOOK_RTOL, atol=HOOK_ATOL))
    except Exception:  # e.g. a view of a non-contiguous tensor
        return False


def _targets(spec: ModelSpec, out: torch.Tensor) -> torch.Tensor:
    if spec.task == "classification":
        return torch.arange(PROBE_SAMPLES) % out.shape[-1]
    return torch.zeros_like(out)


def _compare(spec: ModelSpec, hook: str, got: torch.Tensor, want: torch.Tensor) -> None:
    try:
        torch.testing.assert_close(got, want, rtol=HOOK_RTOL, atol=HOOK_ATOL)
    except AssertionError:
        diff = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
        raise ValueError(
            f"{_label(spec.name, spec.module)}: its {hook!r} hook disagrees with vmap of "
            f"forward (shape {tuple(got.shape)} vs {tuple(want.shape)}, max difference "
            f"{diff:.3g}); see models/hooks.py"
        ) from None


@torch.inference_mode(False)
@torch.enable_grad()
def probe_batched(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    num_classes: int | None,
    sample: torch.Tensor | None = None,
    batched: bool = True,
) -> None:
    """Run ``spec`` batched on a tiny problem as the trainer and evaluator will; ValueError
    (one line) if the generic path cannot, or if a fast-path hook gives other numbers.

    ``sample``: a few real input samples; without it, random floats of ``input_shape`` (or
    zero indices, for models whose input is integer, e.g. embeddings) are tried. Sets
    ``spec.channels_last`` from what the forward accepts. ``batched=False`` stops after the
    plain forward (the cheap part: the first ``vmap`` in a process costs seconds on a loaded
    machine, which every deploy node process would pay).
    """
    label = _label(spec.name, spec.module)
    vec = spec.init_vector()
    x, out = _plain_forward(spec, vec, input_shape, sample)
    _check_output(spec, out, num_classes)
    spec.channels_last = _accepts_channels_last(spec, vec, x, out)
    if not batched:
        return
    y = _targets(spec, out)
    g = torch.Generator().manual_seed(1)
    params = vec + 0.01 * torch.randn(PROBE_MODELS, vec.numel(), generator=g)
    xs = x.expand(PROBE_MODELS, *x.shape).clone()  # each model its own (here equal) batch
    ys = y.expand(PROBE_MODELS, *y.shape).clone()

    def loss_fn(v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return spec.loss(spec.forward(v, xb), yb)

    generic = spec.without_hooks()
    try:
        grads, _ = vmap(grad_and_value(loss_fn))(params, xs, ys)
        with torch.inference_mode():
            own = generic.stacked_forward(params, xs)
            shared = generic.stacked_forward_shared(params, x)
    except Exception as exc:
        raise ValueError(
            f"{label}: its forward cannot run batched across nodes (torch.func.vmap of "
            f"functional_call): {_first_line(exc)} (see docs/models.md)"
        ) from None
    if not torch.isfinite(grads).all():
        raise ValueError(f"{label}: non-finite gradients on the probe batch")
    _check_hooks(spec, params, x, xs, ys, own, shared, grads)


def _check_hooks(
    spec: ModelSpec,
    params: torch.Tensor,
    x: torch.Tensor,
    xs: torch.Tensor,
    ys: torch.Tensor,
    own: torch.Tensor,
    shared: torch.Tensor,
    grads: torch.Tensor,
) -> None:
    """Each hook the module has against the generic path's numbers on the probe."""
    hooks = spec.hooks
    assert hooks is not None
    with torch.inference_mode():
        if hooks.stacked is not None:
            _compare(spec, "stacked", spec.stacked_forward(params, xs), own)
        if hooks.stacked_shared is not None:
            _compare(spec, "stacked_shared", spec.stacked_forward_shared(params, x), shared)
    if hooks.sgd_step_rows is not None:
        lr = 0.1
        stepped = params.clone()
        with torch.no_grad():
            hooks.sgd_step_rows(spec.layout.unflatten(stepped), xs, ys, lr)
        _compare(spec, "sgd_step_rows", stepped, params - lr * grads)


def model_from_module(
    name: str,
    task: Task,
    module: nn.Module,
    *,
    input_shape: tuple[int, ...],
    num_classes: int | None,
    sample: torch.Tensor | None = None,
    probe: bool = True,
) -> ModelSpec:
    """``module`` as a checked ``ModelSpec`` (float32, trainable, layout, probed batched).

    ``probe=False`` skips the batched part of the probe (``probe_batched``), for modules whose
    batched paths and hooks the test suite already pins.
    """
    check_structure(name, module)
    module = module.to(torch.float32).requires_grad_(True)
    spec = ModelSpec(name=name, task=task, module=module, layout=ParamLayout.of(module))
    # a forward that draws random numbers must not shift the run's global RNG stream
    with torch.random.fork_rng(devices=[]):
        probe_batched(spec, tuple(input_shape), num_classes, sample, batched=probe)
    return spec
