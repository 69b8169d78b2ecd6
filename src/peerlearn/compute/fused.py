"""GroupNorm -> max pooling -> ReLU fused into one kernel on the CPU (``compute.fused``).

On this kind of CPU GN-LeNet's convolutions run near the float32 matmul rate, but the work
between them (GroupNorm, 2x2 max pooling, ReLU) streams every activation through memory several
times and took ~40% of evaluation and ~45% of training time (docs/performance.md, issue 16). The
kernel in ``gn_pool_relu.cpp`` reads a convolution's output once for the group statistics and
once, from the cache, to normalize, pool and clip it; in training it also keeps each window's
maximum (raw value, position, whether the ReLU passed it: 5/16 of the input's bytes), so its
backward reads the full input once and writes the input gradient once, with no index tensor and
no zero-filled buffer. In training, the first convolution (3 input channels per model, which
oneDNN runs at ~0.4x the matmul rate as a grouped convolution) is ``conv_first.cpp``'s kernel.

Both sum in another order than PyTorch, so results match the default path only to float
rounding: opt in with ``compute.fused = true``. The kernels are compiled with the C++
compiler (``$CXX``, else ``c++``) at first use and cached (``$PEERLEARN_KERNEL_CACHE``, else
``~/.cache/peerlearn/kernels``) under a hash of its source, the flags, the compiler and the
CPU's feature flags; without a compiler, ``load()`` warns once and returns None, and GN-LeNet
runs its ordinary torch ops. Work is split across ``torch.get_num_threads()`` Python threads
(ctypes releases the GIL during the call).
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from peerlearn.models.spec import ModelSpec

# Each library with its own flags. GroupNorm: no contraction of a * b + c into one rounding,
# so that every normalized value is rounded the same way in vectorized loops and their scalar
# tails. The convolution wants multiply-adds.
_COMMON = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")
LIBRARIES = {
    "gn_pool_relu": (Path(__file__).with_name("gn_pool_relu.cpp"), (*_COMMON, "-ffp-contract=off")),
    "conv_first": (Path(__file__).with_name("conv_first.cpp"), (*_COMMON, "-ffp-contract=fast")),
}

OUT_CHANNELS = 32  # filters per model of GN-LeNet's first convolution (conv_first.cpp's OC)

_lib: ctypes.CDLL | None = None
_conv_lib: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def _cache_dir() -> Path:
    root = os.environ.get("PEERLEARN_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "peerlearn" / "kernels"


def _compile(compiler: str, name: str = "gn_pool_relu") -> Path:
    """Library ``name``'s shared object, compiled now unless a matching one is cached (OSError,
    CalledProcessError or FileNotFoundError when the compiler is missing or fails)."""
    source, flags = LIBRARIES[name]
    exe = shutil.which(compiler)
    if exe is None:
        raise FileNotFoundError(f"C++ compiler {compiler!r} not found")
    version = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), *flags, version, _cpu_flags()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile to a temporary name, then rename: concurrent runs never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [exe, *flags, str(source), "-o", tmp],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The compiled GroupNorm kernels (the convolution's in ``_conv_lib``, built with them), or
    None (with one warning per process) where they cannot be built."""
    global _lib, _conv_lib, _tried
    if _tried:
        return _lib
    _tried = True
    compiler = os.environ.get("CXX") or "c++"
    try:
        lib = ctypes.CDLL(str(_compile(compiler, "gn_pool_relu")))
        conv = ctypes.CDLL(str(_compile(compiler, "conv_first")))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        warnings.warn(
            f"compute.fused: cannot build the fused GroupNorm kernel with {compiler!r} "
            f"({str(detail).strip().splitlines()[-1] if str(detail).strip() else e!r}); "
            "using the unfused torch ops",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.gnpr_forward.argtypes = [ptr] * 8 + [i64] * 4 + [ctypes.c_double, i64, i64]
    lib.gnpr_backward.argtypes = [ptr] * 10 + [i64] * 4 + [i64, i64]  # (all pointers non-null)
    lib.gnpr_forward.restype = lib.gnpr_backward.restype = None
    conv.conv_first_forward.argtypes = [ptr] * 4 + [i64] * 7
    conv.conv_first_backward.argtypes = [ptr] * 4 + [i64] * 7
    conv.conv_first_forward.restype = conv.conv_first_backward.restype = None
    conv.conv_first_gn_forward.argtypes = [ptr] * 7 + [i64] * 5 + [ctypes.c_double, i64, i64]
    conv.conv_first_gn_forward.restype = None
    _lib, _conv_lib = lib, conv
    return lib


def kernel_loaded() -> bool:
    """Whether this process has the kernel (``summary.json``: ``compute.fused_kernel``)."""
    return _lib is not None


def _run_tasks(fn, args: tuple, tasks: int) -> None:
    """``fn(*args, t0, t1)`` for ``tasks`` (samples), one contiguous range per thread."""
    global _pool, _pool_size, _pool_pid
    threads = max(1, min(torch.get_num_threads(), tasks))
    if threads == 1:
        fn(*args, 0, tasks)
        return
    if _pool is None or _pool_size < threads or _pool_pid != os.getpid():  # none after a fork
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="peerlearn-fused")
        _pool_size, _pool_pid = threads, os.getpid()
    bounds = [tasks * i // threads for i in range(threads + 1)]
    futures = [_pool.submit(fn, *args, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    fn(*args, bounds[0], bounds[1])  # this thread takes the first share
    for f in futures:
        f.result()


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class GroupNormPoolReLU(torch.autograd.Function):
    """``relu(max_pool2d(group_norm(h, groups, gamma, beta, eps), 2))`` for a channels-last
    float32 ``h`` (N, C, H, W) on the CPU, with the kernels of ``load()``."""

    @staticmethod
    def forward(ctx, h, gamma, beta, groups: int, eps: float):  # type: ignore[override]
        lib = load()
        assert lib is not None
        n, c, hh, ww = h.shape
        out = torch.empty(n, c, hh // 2, ww // 2, memory_format=torch.channels_last)
        mean, rstd = torch.empty(n, groups), torch.empty(n, groups)
        gamma, beta = gamma.detach().contiguous(), beta.detach().contiguous()
        # for a backward: each window's maximum (its raw input, where it was, whether the
        # ReLU passed it), a quarter and a sixteenth of the input's bytes
        training = h.requires_grad or gamma.requires_grad or beta.requires_grad
        xa = torch.empty_like(out) if training else None
        code = torch.empty(out.shape, dtype=torch.uint8, memory_format=torch.channels_last)
        code = code if training else None
        ptrs = [_ptr(t) if t is not None else None for t in (h, out, xa, code, mean, rstd)]
        ptrs += [_ptr(gamma), _ptr(beta)]
        _run_tasks(lib.gnpr_forward, (*ptrs, hh, ww, c, groups, float(eps)), n)
        if training:
            ctx.save_for_backward(h, xa, code, gamma, mean, rstd)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, gout):  # type: ignore[override]
        lib = load()
        assert lib is not None
        h, xa, code, gamma, mean, rstd = ctx.saved_tensors
        n, c, hh, ww = h.shape
        gout = gout.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(h, memory_format=torch.channels_last)
        dgamma, dbeta = torch.empty(n, c), torch.empty(n, c)
        args = (h, gout, xa, code, dx, dgamma, dbeta, mean, rstd, gamma)
        _run_tasks(lib.gnpr_backward, (*map(_ptr, args), hh, ww, c, ctx.groups), n)
        return dx, dgamma.sum(0), dbeta.sum(0), None, None


def gn_pool_relu(
    h: torch.Tensor, groups: int, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """The fused kernel where it applies (a 4-d channels-last float32 CPU tensor whose
    channels split into ``groups``, the kernel loaded), else the same three torch ops."""
    if (
        h.device.type == "cpu"
        and h.dtype == torch.float32
        and h.dim() == 4
        and h.shape[1] % groups == 0
        and h.is_contiguous(memory_format=torch.channels_last)
        and load() is not None
    ):
        return GroupNormPoolReLU.apply(h, gamma, beta, groups, eps)
    return F.relu(F.max_pool2d(F.group_norm(h, groups, gamma, beta, eps), 2))


class ConvFirst(torch.autograd.Function):
    """J models' first 5x5 convolutions (padding 2, 32 filters each) on their own batches, with
    the kernels of ``conv_first.cpp``: ``x`` (J, B, C, H, W), weight (J, 32, C, 5, 5), bias
    (J, 32) -> (B, J * 32, H, W) channels-last, model j's channels at j*32 .. j*32+31 (the grouped
    convolution's layout). No input gradient: it is the first layer."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        conv = _conv_lib
        assert conv is not None
        j, b, c, hh, ww = x.shape
        x = x.detach().contiguous()
        # each model's filters tap-major, (J, C*25, 32): the kernel reads 32 outputs per tap
        wt = weight.detach().reshape(j, OUT_CHANNELS, -1).transpose(1, 2).contiguous()
        out = torch.empty(b, j * OUT_CHANNELS, hh, ww, memory_format=torch.channels_last)
        args = (x, wt, bias.detach().contiguous(), out)
        _run_tasks(conv.conv_first_forward, (*map(_ptr, args), j, b, c, hh, ww), j * b)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, gout):  # type: ignore[override]
        conv = _conv_lib
        assert conv is not None
        (x,) = ctx.saved_tensors
        j, b, c, hh, ww = x.shape
        gout = gout.contiguous(memory_format=torch.channels_last)
        dwt = torch.empty(j, c * 25, OUT_CHANNELS)
        dbias = torch.empty(j, OUT_CHANNELS)
        args = (x, gout, dwt, dbias)
        _run_tasks(conv.conv_first_backward, (*map(_ptr, args), j, b, c, hh, ww), j)
        dw = dwt.transpose(1, 2).reshape(j, OUT_CHANNELS, c, 5, 5)
        return None, dw, dbias


def conv_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
    """``ConvFirst`` where it applies (float32 CPU tensors, 5x5 filters, 32 per model, an input
    that needs no gradient, the kernel loaded); else None, and the caller runs the grouped
    convolution."""
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == bias.dtype == torch.float32
        and x.dim() == 5
        and weight.shape[1:] == (OUT_CHANNELS, x.shape[2], 5, 5)
        and bias.shape == weight.shape[:2]
        and not x.requires_grad
        and load() is not None
    ):
        return ConvFirst.apply(x, weight, bias)
    return None


def first_block_shared(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor | None:
    """Evaluation's first block for J models on one batch ``x`` (B, C, H, W): the first
    convolution (weight (J, 32, C, 5, 5), bias (J, 32)), then GroupNorm (``groups`` over the J*32
    channels), pooling and ReLU, one sample at a time, so that the convolution's output stays in
    the cache (``conv_first_gn_forward``); (B, J*32, H/2, W/2) channels-last. None where it does
    not apply (a gradient needed, other shapes or types, no kernel)."""
    j = weight.shape[0]
    if not (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == bias.dtype == gamma.dtype == beta.dtype == torch.float32
        and x.dim() == 4
        and weight.shape[1:] == (OUT_CHANNELS, x.shape[1], 5, 5)
        and bias.numel() == gamma.numel() == beta.numel() == j * OUT_CHANNELS
        and (j * OUT_CHANNELS) % groups == 0
        and not (
            torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, gamma, beta))
        )
        and load() is not None
    ):
        return None
    assert _lib is not None and _conv_lib is not None
    b, c, hh, ww = x.shape
    x = x.contiguous()
    wt = weight.reshape(j, OUT_CHANNELS, -1).transpose(1, 2).contiguous()
    out = torch.empty(b, j * OUT_CHANNELS, hh // 2, ww // 2, memory_format=torch.channels_last)
    args = (x, wt, bias.contiguous(), gamma.contiguous(), beta.contiguous(), out)
    gn_forward = ctypes.cast(_lib.gnpr_forward, ctypes.c_void_p).value
    _run_tasks(
        _conv_lib.conv_first_gn_forward,
        (*map(_ptr, args), gn_forward, j, c, hh, ww, groups, float(eps)),
        b,
    )
    return out


def fused_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` with the fused block in its batched hooks, for a module that takes one (it has a
    ``fused_block`` attribute: GN-LeNet) when the kernel builds; else ``spec`` itself, with a
    warning. The template module is not modified: the new spec holds a shallow copy that shares
    its parameters."""
    if not hasattr(spec.module, "fused_block"):
        warnings.warn(
            f"compute.fused: model {spec.name!r} has no fused path (only gn_lenet); ignored",
            RuntimeWarning,
            stacklevel=2,
        )
        return spec
    if load() is None:
        return spec
    module = copy.copy(spec.module)
    module.fused_block = gn_pool_relu
    module.fused_conv_first = conv_first
    module.fused_first_block = first_block_shared
    return replace(spec, module=module, hooks=None)
