"""Any nn.Module through the generic torch.func path: ResNet-8, the hooks contract, and the
build-time errors of modules that cannot train batched across nodes."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.compute import BatchedEvaluator, BatchedTrainer, TrainJob, budget
from peerlearn.config import load_config
from peerlearn.config.load import ConfigError
from peerlearn.data import synthetic
from peerlearn.data.base import Dataset
from peerlearn.experiment import build_setup
from peerlearn.models import FastPaths, build_model, model_from_module
from peerlearn.models.generic import probe_batched
from peerlearn.models.zoo import PINNED_BY_TESTS, model_shape
from peerlearn.sim.engine import Simulator

CIFAR = (3, 32, 32)


def resnet8(shape=CIFAR, seed: int = 1):
    return build_model("resnet8", input_shape=shape, num_classes=10, info={}, seed=seed)


def test_resnet8_shape_and_parameter_count():
    spec = resnet8()
    assert spec.layout.numel == 78_042  # the count docs/models.md states
    assert spec.task == "classification"
    assert spec.hooks == FastPaths()  # no hand batching: the generic path only
    assert spec.forward(spec.init_vector(), torch.randn(5, *CIFAR)).shape == (5, 10)
    assert resnet8((1, 28, 28)).layout.numel == 78_042 - 2 * 16 * 9  # one input channel


@pytest.mark.parametrize(
    ("shape", "classes", "match"),
    [((3072,), 10, "image input"), ((3, 2, 2), 10, "4x4"), (CIFAR, 1, "num_classes")],
)
def test_resnet8_bad_inputs(shape, classes, match):
    with pytest.raises(ValueError, match=match):
        build_model("resnet8", input_shape=shape, num_classes=classes, info={}, seed=0)


def test_resnet8_in_config_schema():
    cfg = load_config(None, ["data.dataset=cifar10", "model.name=resnet8"])
    assert cfg.model.name == "resnet8"
    # the model registry knows ResNet-8 reads images: the quickstart's digits vectors are refused
    with pytest.raises(ConfigError, match="model 'resnet8' reads image data"):
        load_config(None, ["model.name=resnet8"])


def test_vmap_training_equals_each_node_alone_with_torch_optim_sgd():
    """n nodes trained batched through vmap = each node alone with autograd + torch.optim.SGD."""
    spec = resnet8()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, *CIFAR, generator=g), torch.randint(0, 10, (64,), generator=g)
    lr, n_nodes = 0.05, 3
    init = spec.init_vector()
    jobs = [
        TrainJob(
            init + 0.01 * torch.randn(init.shape, generator=g),
            torch.randint(0, 64, (steps, 4), generator=g),
        )
        for steps in (3, 2, 3)[:n_nodes]
    ]
    trainer = BatchedTrainer(spec, x, y, lr=lr)
    assert not trainer.stacked and not trainer.row_sparse  # the generic path
    batched = trainer.run(jobs)
    for i, job in enumerate(jobs):
        module = copy.deepcopy(spec.module)
        spec.layout.load(module, job.start)
        opt = torch.optim.SGD(module.parameters(), lr=lr)
        for batch in job.batches:
            opt.zero_grad()
            F.cross_entropy(module(x[batch]), y[batch]).backward()
            opt.step()
        alone = spec.layout.flatten(module)
        assert not torch.equal(alone, job.start)
        torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2])  # 1: plain forward, channels-last; 2: vmap
def test_resnet8_evaluated_batched_equals_one_node_at_a_time(chunk):
    spec = resnet8((3, 16, 16))
    assert spec.channels_last
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 3, 16, 16, generator=g), torch.randint(0, 10, (30,), generator=g)
    init = spec.init_vector()
    params = torch.stack([init + 0.05 * torch.randn(init.shape, generator=g) for _ in range(3)])
    ev = BatchedEvaluator(spec, x, y, batch_size=8, node_chunk=chunk)
    local = [np.arange(0, 7), np.arange(5, 30), np.arange(3)]
    for got, sets in ((ev.evaluate(params), None), (ev.evaluate(params, local), local)):
        for i in range(3):
            ix = np.arange(30) if sets is None else sets[i]
            with torch.no_grad():
                out = spec.forward(params[i], x[ix])
            want_loss = F.cross_entropy(out, y[ix]).item()
            want_acc = (out.argmax(1) == y[ix]).double().mean().item()
            assert got["loss"][i].item() == pytest.approx(want_loss, rel=1e-5)
            assert got["acc"][i].item() == pytest.approx(want_acc)


def _cifar_shaped(ds: Dataset) -> Dataset:
    """The synthetic blobs with 3,072 features laid out as 3x32x32 images."""
    return dataclasses.replace(
        ds,
        train_x=ds.train_x.view(-1, *CIFAR),
        test_x=ds.test_x.view(-1, *CIFAR),
        input_shape=CIFAR,
    )


def test_short_simulated_run_on_cifar_shaped_synthetic_data_learns():
    blobs = {"n_train": 320, "n_test": 100, "n_features": 3072, "n_classes": 4, "separation": 3}
    overrides = [
        "nodes=4",
        "data.dataset=synthetic",
        *(f"data.synthetic.{k}={v}" for k, v in blobs.items()),
        "topology.kind=full",
        "network.preset=ideal",
        "train.local_steps=4",
        "train.lr=0.05",
        "stop.virtual_time_s=0.2",
        "eval.every_s=0.1",
    ]
    # the config names the MLP; the setup's dataset and model are then swapped for the
    # CIFAR-shaped blobs and ResNet-8 (the schema's synthetic data is flat vectors)
    setup = build_setup(load_config(None, overrides))
    ds = _cifar_shaped(setup.dataset)
    assert synthetic.load(setup.cfg.seed, blobs).train_x.shape == (320, 3072)
    model = build_model("resnet8", input_shape=CIFAR, num_classes=4, info={}, seed=1)
    cfg = setup.cfg.model_copy(
        update={"model": setup.cfg.model.model_copy(update={"name": "resnet8"})}
    )
    sim = Simulator(dataclasses.replace(setup, cfg=cfg, dataset=ds, model=model))
    sim.run()
    means = [v for _, n, _, m, v in sim.recorder.rows if n == -1 and m == "test_loss_mean"]
    assert len(means) >= 3
    assert means[-1] < 0.8 * means[0]  # the test loss falls as the nodes train and average


def _saved_activation_bytes(spec, n_jobs: int, batch: int, shape) -> int:
    """Bytes of distinct tensors autograd keeps for the backward of one batched forward.

    The trainer takes ``vmap`` of ``grad``, which saved-tensor hooks cannot see; ``vmap`` of the
    forward under ordinary autograd runs the same batched operations and saves the same tensors.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = spec.init_vector().repeat(n_jobs, 1).requires_grad_(True)
    x = torch.randn(n_jobs, batch, *shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        spec.without_hooks().stacked_forward(params, x).sum()
    storages.pop(params.untyped_storage().data_ptr(), None)  # the models, counted elsewhere
    return sum(storages.values())


class Functional(nn.Module):
    """Everything in its own forward with torch.nn.functional: no submodules to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(512, 64) * 0.1)
        self.w2 = nn.Parameter(torch.randn(10, 512) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.w1))
        return F.linear(torch.tanh(h) + h, self.w2)


@pytest.mark.parametrize("which", ["resnet8", "functional"])
def test_memory_estimate_covers_the_activations_of_a_batched_step(which):
    if which == "resnet8":
        spec, shape = resnet8(), CIFAR
        meta = model_shape("resnet8", input_shape=CIFAR, num_classes=10, info={})
    else:
        shape = (64,)
        spec = model_from_module(
            "f", "classification", Functional(), input_shape=shape, num_classes=10
        )
        with torch.device("meta"):
            meta = Functional()
    per_sample = budget.activations_per_sample(meta, shape, integer=False)
    jobs, batch = 4, 8
    terms = budget.estimate(
        nodes=jobs,
        params=spec.layout.numel,
        act_per_sample=per_sample,
        batch_size=batch,
        local_steps=1,
        device="cpu",
        model_keys="",
    )
    estimated = next(t.nbytes for t in terms if t.what.startswith("activations"))
    saved = _saved_activation_bytes(spec, jobs, batch, shape)
    assert saved > jobs * batch * 512 * 4  # at least the hidden layer was kept
    assert estimated >= saved, (estimated, saved)


# --- modules that do not fit, and the one-line errors they get -------------------------------


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


class DataDependentBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python control flow on a tensor's value
            return self.lin(x)
        return -self.lin(x)


class InPlaceIntoNewTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 3)
        out += self.lin(x)  # a per-node value written into a tensor every node shares
        return out


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(x), 0.5)


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.lin.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class WrongOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class ViewsItsInput(nn.Module):
    """``view`` needs contiguous memory: fine, but no channels-last batches for it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.view(x.shape[0], -1))


def test_a_forward_that_views_its_input_gets_contiguous_batches():
    spec = model_from_module(
        "v", "classification", ViewsItsInput(), input_shape=(3, 2, 2), num_classes=3
    )
    assert not spec.channels_last
    x = torch.randn(5, 3, 2, 2)
    with torch.no_grad():
        want = spec.forward(spec.init_vector(), x)
    got = BatchedEvaluator(spec, x, torch.zeros(5, dtype=torch.int64), node_chunk=1)
    assert got.evaluate(spec.init_vector()[None])["loss"].isfinite().all()
    one = spec.stacked_forward_shared(spec.init_vector()[None], x)
    torch.testing.assert_close(one[0], want)


class BadHook(nn.Module):
    """Implements the ``stacked`` hook, but wrongly (forgets the bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    def stacked(self, p, x):
        return torch.bmm(x, p["lin.weight"].mT)


class GoodHook(BadHook):
    def stacked(self, p, x):
        return torch.baddbmm(p["lin.bias"].unsqueeze(1), x, p["lin.weight"].mT)


def build(module: nn.Module):
    return model_from_module("mine", "classification", module, input_shape=(4,), num_classes=3)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (WithBatchNorm(), r"model 'mine' \(WithBatchNorm\): buffer 'bn.running_mean' "),
        (DataDependentBranch(), r"\(DataDependentBranch\): its forward cannot run batched"),
        (InPlaceIntoNewTensor(), r"\(InPlaceIntoNewTensor\): its forward cannot run batched"),
        (WithDropout(), r"\(WithDropout\): its forward cannot run batched.*random"),
        (Frozen(), r"parameter 'lin.bias' has requires_grad=False"),
        (WrongOutput(), r"\(batch, num_classes\) logits = \(2, 3\), got shape \(2, 5\)"),
        (BadHook(), r"\(BadHook\): its 'stacked' hook disagrees with vmap of forward"),
    ],
)
def test_modules_that_cannot_train_batched_fail_at_build_with_one_line(module, match):
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match=match) as info:
        build(module)
    assert "\n" not in str(info.value)
    assert torch.equal(torch.random.get_rng_state(), state)  # the probe draws nothing global


def test_a_correct_hook_is_found_checked_and_used():
    spec = build(GoodHook())
    assert spec.hooks.names() == ("stacked",)
    assert spec.without_hooks().hooks.names() == ()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    jobs = [TrainJob(spec.init_vector(), torch.randint(0, 20, (3, 5), generator=g))] * 2
    hooked = BatchedTrainer(spec, x, y, lr=0.1)
    generic = BatchedTrainer(spec.without_hooks(), x, y, lr=0.1)
    assert hooked.stacked and not generic.stacked
    torch.testing.assert_close(hooked.run(jobs), generic.run(jobs), rtol=0, atol=1e-6)


def test_builtin_models_declare_their_hooks_through_the_protocols():
    mf = build_model(
        "matrix_factorization",
        input_shape=(2,),
        num_classes=None,
        info={"n_users": 5, "n_items": 7},
        seed=0,
        factors=3,
    )
    assert mf.hooks.names() == ("stacked", "sgd_step_rows")
    lenet = build_model("gn_lenet", input_shape=(3, 16, 16), num_classes=10, info={}, seed=0)
    assert lenet.hooks.names() == ("stacked", "stacked_shared")


@pytest.mark.parametrize("name", sorted(PINNED_BY_TESTS))
def test_builtin_models_pass_the_full_probe_they_skip_at_build(name):
    shape = {"gn_lenet": (3, 16, 16), "mlp": (64,), "matrix_factorization": (2,)}[name]
    classes = None if name == "matrix_factorization" else 10
    info = {"n_users": 5, "n_items": 7}
    spec = build_model(name, input_shape=shape, num_classes=classes, info=info, seed=0)
    probe_batched(spec, shape, classes)  # vmap path, and every hook against it
