"""The opt-in fused GroupNorm -> max pooling -> ReLU kernel (``compute.fused``)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from peerlearn.compute import BatchedEvaluator, BatchedTrainer, TrainJob, fused
from peerlearn.config import load_config
from peerlearn.config.load import dump_config
from peerlearn.models import build_model
from peerlearn.runner import run_experiment
from tests.conftest import small


@pytest.fixture
def kernel():
    lib = fused.load()
    if lib is None:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    return lib


def _unfused(h, groups, gamma, beta):
    return F.relu(F.max_pool2d(F.group_norm(h, groups, gamma, beta), 2))


@pytest.mark.parametrize(
    "shape, groups",
    [
        ((3, 32, 16, 16), 2),  # one GN-LeNet, as evaluated
        ((2, 128, 8, 8), 8),  # four GN-LeNets side by side, as trained
        ((2, 32, 7, 9), 2),  # odd sizes: a row and a column no window covers
        ((4, 96, 6, 6), 6),
    ],
)
def test_kernel_matches_torch_ops_forward_and_backward(kernel, shape, groups) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    x = (3 * torch.randn(shape, generator=g) + 1).contiguous(memory_format=torch.channels_last)
    gamma = torch.randn(c, generator=g)  # some negative: a window's max is its min before GN
    beta = torch.randn(c, generator=g)
    grad_out = torch.randn(shape[0], c, shape[2] // 2, shape[3] // 2, generator=g)
    results = []
    for fn in (_unfused, fused.gn_pool_relu):
        xs, gs, bs = (t.clone().requires_grad_(True) for t in (x, gamma, beta))
        out = fn(xs, groups, gs, bs)
        results.append((out, *torch.autograd.grad(out, (xs, gs, bs), grad_out)))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert results[1][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(16, 8, 3, 32, 32), (3, 2, 1, 7, 9), (2, 3, 4, 8, 13)])
def test_first_convolution_matches_the_grouped_convolution(kernel, shape) -> None:
    """The first layer's kernel: output, weight and bias gradients as the grouped convolution
    the default path runs (widths not a multiple of its 4-pixel blocks included)."""
    j, b, c, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    weight = 0.2 * torch.randn(j, 32, c, 5, 5, generator=g)
    bias = torch.randn(j, 32, generator=g)
    grad_out = torch.randn(b, j * 32, h, w, generator=g)
    ws, bs = (t.clone().requires_grad_(True) for t in (weight, bias))
    xs = x.transpose(0, 1).reshape(b, j * c, h, w)
    want = F.conv2d(xs, ws.reshape(j * 32, c, 5, 5), bs.reshape(-1), padding=2, groups=j)
    wants = (want, *torch.autograd.grad(want, (ws, bs), grad_out))
    ws, bs = (t.clone().requires_grad_(True) for t in (weight, bias))
    got = fused.conv_first(x, ws, bs)
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    gots = (got, *torch.autograd.grad(got, (ws, bs), grad_out))
    for a, e in zip(gots, wants, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    # where it does not apply, the caller runs the grouped convolution
    assert fused.conv_first(x.requires_grad_(True), ws, bs) is None
    assert fused.conv_first(x.detach(), ws[:, :16], bs[:, :16]) is None


@pytest.mark.parametrize("shape, j", [((5, 3, 32, 32), 2), ((3, 1, 7, 9), 3), ((2, 4, 8, 12), 1)])
def test_evaluation_first_block_matches_torch_ops(kernel, shape, j) -> None:
    """Evaluation's first block (convolution, GroupNorm, pooling, ReLU per sample, J models on
    one shared batch) against the dense convolution and the three torch ops."""
    c = shape[1]
    g = torch.Generator().manual_seed(sum(shape) + j)
    x = torch.randn(shape, generator=g)
    weight = 0.2 * torch.randn(j, 32, c, 5, 5, generator=g)
    bias, gamma, beta = (torch.randn(j * 32, generator=g) for _ in range(3))
    want = _unfused(
        F.conv2d(x, weight.reshape(j * 32, c, 5, 5), bias, padding=2), 2 * j, gamma, beta
    )
    with torch.inference_mode():
        got = fused.first_block_shared(x, weight, bias.view(j, 32), 2 * j, gamma, beta)
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a gradient to compute: the caller runs the torch ops instead
    assert (
        fused.first_block_shared(x, weight.requires_grad_(True), bias, 2 * j, gamma, beta) is None
    )


def test_kernel_keeps_nan(kernel) -> None:
    """A diverged model must show NaN, not a clipped 0 (the ReLU and the pooling keep NaN)."""
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("nan")
    out = fused.gn_pool_relu(x, 2, torch.ones(32), torch.zeros(32))
    assert out[0, :16].isnan().all()  # the whole group's statistics are NaN
    assert not out[1].isnan().any()


@pytest.mark.parametrize("compiler", ["no-such-compiler", "false"])  # missing; fails
def test_missing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path, compiler) -> None:
    if compiler == "no-such-compiler":
        compiler = str(tmp_path / compiler)
    monkeypatch.setenv("CXX", compiler)
    monkeypatch.setenv("PEERLEARN_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fused, "_lib", None)
    monkeypatch.setattr(fused, "_tried", False)
    spec = build_model("gn_lenet", input_shape=(3, 16, 16), num_classes=10, info={}, seed=1)
    with pytest.warns(RuntimeWarning, match="cannot build the fused GroupNorm kernel"):
        assert fused.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        assert fused.load() is None
        assert fused.fused_spec(spec) is spec
        x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
        gamma, beta = torch.randn(32), torch.randn(32)
        assert torch.equal(fused.gn_pool_relu(x, 2, gamma, beta), _unfused(x, 2, gamma, beta))
    assert not list((tmp_path / "cache").glob("*.so"))


def test_model_without_fused_path_is_left_alone() -> None:
    spec = build_model("mlp", input_shape=(64,), num_classes=10, info={}, seed=1)
    with pytest.warns(RuntimeWarning, match="no fused path"):
        assert fused.fused_spec(spec) is spec


def _problem():
    g = torch.Generator().manual_seed(4)
    spec = build_model("gn_lenet", input_shape=(3, 16, 16), num_classes=10, info={}, seed=1)
    x, y = torch.randn(96, 3, 16, 16, generator=g), torch.randint(0, 10, (96,), generator=g)
    jobs = [
        TrainJob(
            spec.init_vector() + 0.01 * torch.randn(spec.layout.numel, generator=g),
            torch.randint(0, 96, (steps, 8), generator=g),
        )
        for steps in (4, 4, 3, 2, 4)
    ]
    return spec, x, y, jobs


def test_fused_training_and_evaluation_match_the_default_path(kernel) -> None:
    spec, x, y, jobs = _problem()
    on = fused.fused_spec(spec)
    assert on is not spec and on.module.fused_block is not None
    assert spec.module.fused_block is None  # the template module is untouched
    runs = {}
    for name, s in (("default", spec), ("fused", on)):
        trainer = BatchedTrainer(s, x, y, lr=0.05)
        params = trainer.run(jobs)
        metrics = BatchedEvaluator(s, x, y, batch_size=40).evaluate(params)
        runs[name] = (params, trainer.last_loss, metrics)
    (p0, l0, m0), (p1, l1, m1) = runs["default"], runs["fused"]
    assert not torch.equal(p0, jobs[0].start)  # training moved the models
    torch.testing.assert_close(p1, p0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m1["loss"], m0["loss"], rtol=1e-4, atol=1e-6)
    assert (m1["acc"] - m0["acc"]).abs().max() <= 2 / 96  # a near-tie may flip an argmax


def test_config_key_is_omitted_from_the_dump_at_its_default() -> None:
    default = load_config(None, [])
    assert default.compute.fused is False
    assert "fused" not in dump_config(default)
    on = load_config(None, ["compute.fused=true"])
    assert "fused = true" in dump_config(on)


def test_summary_records_the_setting(tmp_path) -> None:
    """``summary.json`` says when compute.fused was asked for; a model without a fused path
    (the MLP here) warns and runs unchanged."""
    plain = run_experiment(small(), tmp_path / "plain", quiet=True, plots=False)
    with pytest.warns(RuntimeWarning, match="no fused path"):
        asked = run_experiment(
            small("compute.fused=true"), tmp_path / "fused", quiet=True, plots=False
        )
    assert "fused" not in plain.summary["compute"]
    assert asked.summary["compute"]["fused"] is True
    assert asked.summary["compute"]["fused_kernel"] == fused.kernel_loaded()
    assert asked.recorder.rows == plain.recorder.rows  # the MLP's numbers do not change


def test_kernels_give_the_same_bits_on_any_thread_count(kernel) -> None:
    """Work is split by sample (or model) across threads and each one's sums run in the same
    order whatever the split: results on 3 threads equal 1 thread's bit for bit."""
    g = torch.Generator().manual_seed(7)
    x5 = torch.randn(5, 4, 3, 12, 10, generator=g)
    weight = 0.2 * torch.randn(5, 32, 3, 5, 5, generator=g)
    bias, gamma, beta = (torch.randn(5 * 32, generator=g) for _ in range(3))
    grad_out = torch.randn(4, 5 * 32, 6, 5, generator=g)
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            ws, bs, gs, bts = (
                t.clone().requires_grad_(True) for t in (weight, bias.view(5, 32), gamma, beta)
            )
            out = fused.gn_pool_relu(fused.conv_first(x5, ws, bs), 10, gs, bts)
            grads = torch.autograd.grad(out, (ws, bs, gs, bts), grad_out)
            with torch.inference_mode():
                shared = fused.first_block_shared(x5[0], weight, bias.view(5, 32), 10, gamma, beta)
            runs.append((out, *grads, shared))
    finally:
        torch.set_num_threads(before)
    for one, three in zip(*runs, strict=True):
        assert torch.equal(one, three)
