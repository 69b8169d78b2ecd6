"""Model zoo and flat-vector layout."""

from __future__ import annotations

import copy

import pytest
import torch

from peerlearn.models import MODELS, ParamLayout, build_model

MF_INFO = {"n_users": 610, "n_items": 9724}


def small(name: str, seed: int = 0):
    if name == "gn_lenet":
        return build_model(name, input_shape=(3, 16, 16), num_classes=10, info={}, seed=seed)
    if name == "mlp":
        return build_model(
            name, input_shape=(64,), num_classes=10, info={}, seed=seed, hidden=(32, 16)
        )
    return build_model(
        name, input_shape=(2,), num_classes=None, info={"n_users": 7, "n_items": 11}, seed=seed
    )


def sample_input(name: str, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if name == "gn_lenet":
        return torch.randn(n, 3, 16, 16, generator=g)
    if name == "mlp":
        return torch.randn(n, 64, generator=g)
    users = torch.randint(0, 7, (n,), generator=g)
    items = torch.randint(0, 11, (n,), generator=g)
    return torch.stack([users, items], 1)


def test_gn_lenet_cifar10_parameter_count():
    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    assert spec.layout.numel == 89_834
    assert spec.task == "classification"
    assert spec.init_vector().shape == (89_834,)


def test_gn_lenet_other_input_shapes():
    spec = build_model("gn_lenet", input_shape=(1, 28, 28), num_classes=10, info={}, seed=1)
    out = spec.forward(spec.init_vector(), torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)


def test_matrix_factorization_parameter_count_and_init():
    spec = build_model(
        "matrix_factorization", input_shape=(2,), num_classes=None, info=MF_INFO, seed=1
    )
    assert spec.layout.numel == 206_680
    assert spec.task == "regression"
    vec = spec.init_vector()
    assert vec.abs().max() <= 0.05


def test_matrix_factorization_predicts_dot_product():
    spec = small("matrix_factorization")
    vec = spec.init_vector()
    params = spec.layout.unflatten(vec)
    x = sample_input("matrix_factorization")
    u, i = params["user.weight"][x[:, 0]], params["item.weight"][x[:, 1]]
    torch.testing.assert_close(spec.forward(vec, x), (u * i).sum(1))


def test_models_listed():
    assert set(MODELS) == {"gn_lenet", "matrix_factorization", "mlp", "resnet8"}


@pytest.mark.parametrize("name", ["gn_lenet", "mlp", "matrix_factorization"])
def test_layout_round_trip(name):
    spec = small(name)
    layout = spec.layout
    vec = torch.randn(layout.numel)
    module = copy.deepcopy(spec.module)
    layout.load(module, vec)
    torch.testing.assert_close(layout.flatten(module), vec, rtol=0, atol=0)
    parts = layout.unflatten(vec)
    assert list(parts) == list(layout.names)
    for (name_, p), shape in zip(parts.items(), layout.shapes, strict=True):
        assert p.shape == shape
        torch.testing.assert_close(p.reshape(-1), vec[layout.slices()[name_]], rtol=0, atol=0)
    # Views, not copies: the protocols rely on writing through the vector.
    vec[0] = 123.0
    assert parts[layout.names[0]].reshape(-1)[0] == 123.0
    assert ParamLayout.of(module) == layout
    assert sum(s.stop - s.start for s in layout.slices().values()) == layout.numel


def test_layout_rejects_buffers():
    with pytest.raises(AssertionError):
        ParamLayout.of(torch.nn.BatchNorm1d(3))


@pytest.mark.parametrize("name", ["gn_lenet", "mlp", "matrix_factorization"])
def test_functional_forward_matches_module(name):
    spec = small(name)
    vec = torch.randn(spec.layout.numel) * 0.1
    module = copy.deepcopy(spec.module)
    spec.layout.load(module, vec)
    x = sample_input(name)
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(spec.forward(vec, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gn_lenet", "mlp", "matrix_factorization"])
def test_init_deterministic_and_leaves_global_rng(name):
    state = torch.random.get_rng_state()
    a = small(name, seed=5).init_vector()
    b = small(name, seed=5).init_vector()
    c = small(name, seed=6).init_vector()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet", {"input_shape": (3, 32, 32), "num_classes": 10, "info": {}}, "unknown model"),
        ("gn_lenet", {"input_shape": (64,), "num_classes": 10, "info": {}}, "image input"),
        ("gn_lenet", {"input_shape": (3, 4, 4), "num_classes": 10, "info": {}}, "8x8"),
        ("gn_lenet", {"input_shape": (3, 32, 32), "num_classes": None, "info": {}}, "num_classes"),
        ("mlp", {"input_shape": (64,), "num_classes": 1, "info": {}}, "num_classes"),
        (
            "matrix_factorization",
            {"input_shape": (2,), "num_classes": None, "info": {"n_items": 5}},
            "n_users",
        ),
        (
            "matrix_factorization",
            {"input_shape": (3, 32, 32), "num_classes": None, "info": MF_INFO},
            "input_shape",
        ),
    ],
)
def test_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, seed=0, **kwargs)


@pytest.mark.parametrize(
    ("name", "shape", "x_fn"),
    [
        ("mlp", (64,), lambda g, j: torch.randn(j, 5, 64, generator=g)),
        ("gn_lenet", (3, 16, 16), lambda g, j: torch.randn(j, 5, 3, 16, 16, generator=g)),
        (
            "matrix_factorization",
            (2,),
            lambda g, j: torch.stack(
                [
                    torch.randint(0, 7, (j, 5), generator=g),
                    torch.randint(0, 11, (j, 5), generator=g),
                ],
                dim=-1,
            ),
        ),
    ],
)
def test_hand_batched_forward_equals_vmap_of_forward(name, shape, x_fn) -> None:
    info = {"n_users": 7, "n_items": 11}
    spec = build_model(name, input_shape=shape, num_classes=10, info=info, seed=3)
    g = torch.Generator().manual_seed(0)
    j = 4
    params = spec.init_vector() + 0.1 * torch.randn(j, spec.layout.numel, generator=g)
    x = x_fn(g, j)
    assert hasattr(spec.module, "stacked")
    want = torch.func.vmap(spec.forward)(params, x)
    torch.testing.assert_close(spec.stacked_forward(params, x), want, atol=1e-5, rtol=1e-5)
