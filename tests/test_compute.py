"""Batched training, minibatch streams and batched evaluation."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peerlearn.compute import BatchedEvaluator, BatchedTrainer, MinibatchStream, TrainJob
from peerlearn.compute.precision import use_tf32
from peerlearn.models import build_model
from peerlearn.models.zoo import MLP

N_USERS, N_ITEMS = 9, 13
# PEERLEARN_TEST_DEVICE=cuda runs the batched training and evaluation tests on a GPU, in strict
# float32 (TF32 convolutions would round differently from the per-node reference)
DEVICE = os.environ.get("PEERLEARN_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    use_tf32(False)


def make_problem(name: str, n: int = 64, seed: int = 0):
    """A small model and a random dataset it can consume."""
    g = torch.Generator().manual_seed(seed)
    if name == "gn_lenet":
        spec = build_model("gn_lenet", input_shape=(3, 16, 16), num_classes=10, info={}, seed=1)
        return spec, torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)
    if name == "mlp":
        spec = build_model(
            "mlp", input_shape=(64,), num_classes=10, info={}, seed=1, hidden=(32, 16)
        )
        return spec, torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    spec = build_model(
        "matrix_factorization",
        input_shape=(2,),
        num_classes=None,
        info={"n_users": N_USERS, "n_items": N_ITEMS},
        seed=1,
        factors=4,
    )
    x = torch.stack(
        [
            torch.randint(0, N_USERS, (n,), generator=g),
            torch.randint(0, N_ITEMS, (n,), generator=g),
        ],
        1,
    )
    y = torch.randint(1, 11, (n,), generator=g).float() / 2
    return spec, x, y


def random_jobs(spec, n_samples: int, step_counts, seed: int) -> list[TrainJob]:
    """One job per step count: a perturbed initial vector and random batches of 4."""
    g = torch.Generator().manual_seed(seed)
    init = spec.init_vector()
    return [
        TrainJob(
            init + 0.01 * torch.randn(init.shape, generator=g),
            torch.randint(0, n_samples, (steps, 4), generator=g),
        )
        for steps in step_counts
    ]


@pytest.mark.parametrize("name", ["mlp", "gn_lenet", "matrix_factorization"])
def test_batched_run_equals_reference(name):
    spec, x, y = make_problem(name)
    lr = 0.5 if name == "matrix_factorization" else 0.05
    trainer = BatchedTrainer(spec, x, y, lr=lr, device=DEVICE)
    jobs = random_jobs(spec, len(y), (2, 5, 3), seed=7)
    starts = [job.start.clone() for job in jobs]
    result = trainer.run(jobs)
    assert result.shape == (3, spec.layout.numel)
    for i, job in enumerate(jobs):
        assert torch.equal(job.start, starts[i])  # snapshots are not modified
        reference = trainer.run_one_reference(job)
        torch.testing.assert_close(result[i].cpu(), reference.cpu(), rtol=0, atol=1e-5)
        assert not torch.equal(result[i].cpu(), job.start)
    assert trainer.last_loss is not None and trainer.last_loss.shape == (3,)


@pytest.mark.parametrize("name", ["mlp", "gn_lenet", "matrix_factorization"])
def test_chunked_and_vmap_paths_give_each_job_its_own_trajectory(name):
    spec, x, y = make_problem(name)
    jobs = random_jobs(spec, len(y), (3, 1, 4, 2, 3), seed=3)
    whole = BatchedTrainer(spec, x, y, lr=0.05, device=DEVICE, max_jobs_per_call=100)
    want = whole.run(jobs)
    chunked = BatchedTrainer(spec, x, y, lr=0.05, device=DEVICE, max_jobs_per_call=2)
    torch.testing.assert_close(chunked.run(jobs), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.last_loss, whole.last_loss)
    vmapped = BatchedTrainer(spec, x, y, lr=0.05, stacked=False, device=DEVICE)
    torch.testing.assert_close(vmapped.run(jobs), want, rtol=0, atol=1e-5)


def flat_gradient_step(trainer: BatchedTrainer, params, xb, yb) -> torch.Tensor:
    """One SGD step the way the trainer first did it: plain autograd (for the MLP, its layers
    as plain ``baddbmm`` calls, not ``_StackedLinear``), the gradient w.r.t. the flat (J, P)
    vector (autograd concatenates the pieces), then one ``add_`` on the whole tensor."""
    p = params.detach().requires_grad_(True)
    views = trainer.spec.layout.unflatten(p)
    module = trainer.spec.module
    if isinstance(module, MLP):
        out = module._tail(views, xb.flatten(2), 0)
    else:
        out = trainer.hooks.stacked(views, xb)
    per_sample = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="none")
    losses = per_sample.view(yb.shape).mean(1)
    (grads,) = torch.autograd.grad(losses.sum(), p)
    with torch.no_grad():
        params.add_(grads, alpha=-trainer.lr)
    return losses.detach()


@pytest.mark.parametrize(
    "name, shape, hidden, jobs",
    [
        ("mlp", (1, 28, 28), (113,), 16),  # the repro config's MLP
        ("mlp", (64,), (32, 16), 5),
        ("mlp", (30,), (), 3),
        ("gn_lenet", (3, 16, 16), (), 4),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_per_parameter_updates_equal_the_flat_gradient_step_bit_for_bit(
    name, shape, hidden, jobs, threads
):
    spec = build_model(name, input_shape=shape, num_classes=10, info={}, seed=1, hidden=hidden)
    g = torch.Generator().manual_seed(len(shape) + jobs)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for trial in range(3):
            batch = 8 if trial < 2 else 3
            x = torch.randn(jobs, batch, *shape, generator=g)
            y = torch.randint(0, 10, (jobs, batch), generator=g)
            trainer = BatchedTrainer(spec, x.flatten(0, 1), y.flatten(), lr=0.05 + 0.1 * trial)
            init = spec.init_vector() + 0.1 * torch.randn(jobs, spec.layout.numel, generator=g)
            a, b = init.clone(), init.clone()
            with torch.enable_grad():
                for _ in range(3):
                    got = trainer._sgd_step_on(a, x, y)
                    want = flat_gradient_step(trainer, b, x, y)
                    assert torch.equal(got, want)
                    assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)


def test_last_loss_is_mean_over_each_jobs_steps():
    spec, x, y = make_problem("mlp")
    trainer = BatchedTrainer(spec, x, y, lr=0.1)
    batches = torch.arange(12).view(3, 4)
    trainer.run([TrainJob(spec.init_vector(), batches), TrainJob(spec.init_vector(), batches[:1])])
    vec, losses = spec.init_vector(), []
    for batch in batches:
        vec = vec.requires_grad_(True)
        loss = spec.loss(spec.forward(vec, x[batch]), y[batch])
        (grad,) = torch.autograd.grad(loss, vec)
        vec = (vec - 0.1 * grad).detach()
        losses.append(loss.item())
    expected = torch.tensor([sum(losses) / 3, losses[0]])
    torch.testing.assert_close(trainer.last_loss, expected, rtol=1e-5, atol=1e-6)


def test_zero_steps_and_no_jobs():
    spec, x, y = make_problem("mlp")
    trainer = BatchedTrainer(spec, x, y, lr=0.1, device=DEVICE)
    start = spec.init_vector()
    out = trainer.run(
        [
            TrainJob(start, torch.zeros(0, 4, dtype=torch.int64)),
            TrainJob(start, torch.zeros(1, 4, dtype=torch.int64)),
        ]
    )
    assert torch.equal(out[0].cpu(), start)
    assert math.isnan(trainer.last_loss[0])
    assert trainer.run([]).shape == (0, spec.layout.numel)


def test_training_reduces_loss():
    # Linearly separable blobs: a few SGD steps must cut the loss.
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 64, generator=g) * 3
    y = torch.randint(0, 4, (256,), generator=g)
    x = centers[y] + torch.randn(256, 64, generator=g)
    spec = build_model("mlp", input_shape=(64,), num_classes=4, info={}, seed=0, hidden=(16,))
    trainer = BatchedTrainer(spec, x, y, lr=0.05)
    streams = [MinibatchStream(np.arange(256), 16, seed=1, node=i) for i in range(2)]
    init = spec.init_vector()
    trained = trainer.run([TrainJob(init, s.take(40)) for s in streams])
    evaluator = BatchedEvaluator(spec, x, y)
    before = evaluator.evaluate(init[None])
    after = evaluator.evaluate(trained)
    assert (after["loss"] < 0.5 * before["loss"]).all()
    assert (after["acc"] > 0.9).all()


def test_stream_deterministic_per_seed_and_node():
    idx = np.arange(100, 137)
    a = MinibatchStream(idx, 5, seed=3, node=2).take(20)
    b = MinibatchStream(idx, 5, seed=3, node=2).take(20)
    assert torch.equal(a, b)
    assert not torch.equal(a, MinibatchStream(idx, 5, seed=3, node=1).take(20))
    assert not torch.equal(a, MinibatchStream(idx, 5, seed=4, node=2).take(20))
    # Taking in pieces yields the same stream as taking at once.
    s = MinibatchStream(idx, 5, seed=3, node=2)
    pieces = torch.cat([s.take(k) for k in (3, 0, 7, 10)])
    assert torch.equal(pieces, a)


def test_stream_covers_every_sample_once_per_pass():
    idx = np.arange(50, 73)  # 23 samples, batch 4: batches straddle passes
    s = MinibatchStream(idx, 4, seed=0, node=0)
    batches = s.take(23 * 3 // 4)  # 3 full passes = 69 samples = 17 batches + 1 leftover
    assert batches.shape == (17, 4) and batches.dtype == torch.int64
    flat = torch.cat([batches.reshape(-1), s.take(1).reshape(-1)[:1]]).numpy()
    for p in range(3):
        assert sorted(flat[p * 23 : (p + 1) * 23]) == list(idx)
    # Passes are reshuffled.
    assert not np.array_equal(flat[:23], flat[23:46])


def test_stream_with_fewer_samples_than_batch():
    idx = np.array([4, 9, 11])
    batches = MinibatchStream(idx, 8, seed=0, node=0).take(5)
    assert batches.shape == (5, 8)
    assert set(batches.reshape(-1).tolist()) <= {4, 9, 11}
    with pytest.raises(ValueError):
        MinibatchStream(np.array([], dtype=np.int64), 8, seed=0, node=0)


def direct_metrics(spec, vec, x, y):
    """One node, no batching: what the evaluator must reproduce."""
    with torch.no_grad():
        out = spec.forward(vec, x)
    if spec.task == "classification":
        return {
            "acc": (out.argmax(1) == y).double().mean().item(),
            "loss": F.cross_entropy(out, y).item(),
        }
    mse = F.mse_loss(out, y).item()
    rounded = torch.round(out.clamp(0.5, 5.0) * 2) / 2
    return {"loss": mse, "rmse": math.sqrt(mse), "acc": (rounded == y).double().mean().item()}


def node_params(spec, k, scale):
    g = torch.Generator().manual_seed(11)
    init = spec.init_vector()
    return torch.stack([init + scale * torch.randn(init.shape, generator=g) for _ in range(k)])


@pytest.mark.parametrize("name", ["mlp", "gn_lenet"])
def test_evaluator_shared_test_set(name):
    spec, x, y = make_problem(name, n=50, seed=4)
    params = node_params(spec, 5, 0.05)
    # Small batch and chunk sizes so that both loops (samples, nodes) take several rounds.
    evaluator = BatchedEvaluator(spec, x, y, batch_size=16, node_chunk=2, device=DEVICE)
    subset = np.array([3, 7, 8, 20, 21, 22, 40, 49, 0])
    for sub in (None, subset):
        got = evaluator.evaluate(params, subset=sub)
        assert set(got) == {"acc", "loss"}
        for i in range(5):
            xs, ys = (x, y) if sub is None else (x[sub], y[sub])
            want = direct_metrics(spec, params[i], xs, ys)
            for key, value in want.items():
                assert got[key][i].item() == pytest.approx(value, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["matrix_factorization", "mlp"])
def test_evaluator_local_test_sets(name):
    spec, x, y = make_problem(name, n=80, seed=5)
    if name == "matrix_factorization":
        params = node_params(spec, 5, 0.8)  # big factors: predictions spread over the rating range
    else:
        params = node_params(spec, 5, 0.05)
    rng = np.random.default_rng(0)
    local = [rng.choice(80, size=m, replace=False) for m in (3, 17, 40, 1, 25)]
    evaluator = BatchedEvaluator(spec, x, y, batch_size=8, node_chunk=3, device=DEVICE)
    got = evaluator.evaluate(params, test_indices=local)
    if name == "matrix_factorization":
        assert set(got) == {"acc", "loss", "rmse"}
    for i, ix in enumerate(local):
        want = direct_metrics(spec, params[i], x[ix], y[ix])
        for key, value in want.items():
            assert got[key][i].item() == pytest.approx(value, rel=1e-5, abs=1e-6)
    if name == "matrix_factorization":
        assert (got["acc"] > 0).any()  # the exact-match metric is exercised


def test_evaluator_default_chunk_follows_the_work_per_sample():
    # on a CPU: heavy convolutions one node per call, tiny MLPs many; the numbers do not change
    conv, x, y = make_problem("gn_lenet", n=20, seed=6)
    mlp, *_ = make_problem("mlp", n=20, seed=6)
    assert BatchedEvaluator(conv, x, y).node_chunk == 1
    assert BatchedEvaluator(mlp, *make_problem("mlp", n=20, seed=6)[1:]).node_chunk == 16
    assert BatchedEvaluator(conv, x, y, device="meta").node_chunk == 16  # not a CPU
    params = node_params(conv, 5, 0.05)
    one = BatchedEvaluator(conv, x, y).evaluate(params)
    many = BatchedEvaluator(conv, x, y, node_chunk=5).evaluate(params)
    for key in one:
        assert torch.allclose(one[key], many[key], rtol=1e-5, atol=1e-6)


def test_training_works_inside_no_grad_and_inference_mode():
    # The simulator may call the trainer from inside an evaluation/no-grad region.
    spec, x, y = make_problem("mlp")
    trainer = BatchedTrainer(spec, x, y, lr=0.1, device=DEVICE)
    job = TrainJob(spec.init_vector(), torch.arange(8).view(2, 4))
    expected = trainer.run([job])[0]
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            torch.testing.assert_close(trainer.run([job])[0], expected, rtol=0, atol=0)
            torch.testing.assert_close(trainer.run_one_reference(job), expected, rtol=0, atol=1e-5)


def test_relu_after_pooling_is_exact():
    # GNLeNet's batched path applies ReLU after max pooling: same values and same gradients as
    # the module's ReLU-then-pool, ties at zero included
    z = torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    z[0, 0, :4, :4] = 0.0
    z[1, 1, :2, :2] = -0.0
    for fmt in (torch.contiguous_format, torch.channels_last):
        a = z.clone(memory_format=fmt).requires_grad_(True)
        b = z.clone(memory_format=fmt).requires_grad_(True)
        out_a, out_b = F.max_pool2d(F.relu(a), 2), F.relu(F.max_pool2d(b, 2))
        assert torch.equal(out_a, out_b)
        grad = torch.randn(out_a.shape, generator=torch.Generator().manual_seed(3))
        out_a.backward(grad)
        out_b.backward(grad)
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ),
    ],
)
@pytest.mark.parametrize("name", ["mlp", "gn_lenet"])
def test_graphed_steps_match_eager(name, device):
    # 11 jobs (padded to 16 in the graph), mixed step counts (several captured job counts), and
    # a second call that replays cached graphs. On a CPU "replay" calls the step again
    # (eager_replay): the bookkeeping of the CUDA-graph path, tested without a GPU.
    from peerlearn.compute.cuda_graph import GraphedSteps, eager_replay

    use_tf32(False)
    spec, x, y = make_problem(name)
    jobs = random_jobs(spec, len(y), (3, 1, 4, 2, 3, 5, 5, 1, 2, 4, 3), seed=5)
    kwargs = {"lr": 0.05, "device": device, "max_jobs_per_call": 100}
    eager = BatchedTrainer(spec, x, y, cuda_graphs=False, **kwargs)
    graphed = BatchedTrainer(spec, x, y, **kwargs)
    assert eager._graphs is None and (graphed._graphs is None) == (device == "cpu")
    if device == "cpu":
        cpu = torch.device("cpu")
        graphed._graphs = GraphedSteps(graphed._sgd_step, spec.layout.numel, cpu, eager_replay)
    want = eager.run(jobs)
    for _ in range(2):
        torch.testing.assert_close(graphed.run(jobs), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(graphed.last_loss, eager.last_loss, rtol=1e-6, atol=1e-7)
    assert {jobs for jobs, _ in graphed._graphs._graphs} == {8, 16}  # 11 and 9..2 jobs padded


def test_failed_capture_falls_back_to_eager_steps():
    from peerlearn.compute.cuda_graph import GraphCaptureError, GraphedSteps

    def failing(fn, device):
        raise GraphCaptureError("no graphs here")

    spec, x, y = make_problem("mlp")
    job = TrainJob(spec.init_vector(), torch.arange(12).view(3, 4))
    want = BatchedTrainer(spec, x, y, lr=0.1).run([job])
    trainer = BatchedTrainer(spec, x, y, lr=0.1)
    cpu = torch.device("cpu")
    trainer._graphs = GraphedSteps(trainer._sgd_step, spec.layout.numel, cpu, failing)
    with pytest.warns(UserWarning, match="training eagerly"):
        got = trainer.run([job])
    assert trainer._graphs is None
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mlp", "gn_lenet"])
def test_identical_models_are_evaluated_once_with_identical_results(name):
    spec, x, y = make_problem(name, n=40, seed=8)
    distinct = node_params(spec, 3, 0.05)
    # rows 0, 2, 3, 6 are one model, 1 and 5 another, 4 a third (as at t = 0 plus some training)
    params = distinct[[0, 1, 0, 0, 2, 1, 0]]
    plain = BatchedEvaluator(spec, x, y, batch_size=16, node_chunk=2, dedupe=False, device=DEVICE)
    dedup = BatchedEvaluator(spec, x, y, batch_size=16, node_chunk=2, device=DEVICE)
    for sub in (None, np.array([1, 5, 9, 30])):
        want = plain.evaluate(params, subset=sub)
        got = dedup.evaluate(params, subset=sub)
        assert set(got) == set(want)
        for key in want:  # to the last bit
            assert torch.equal(got[key], want[key]), key
    assert plain.models_evaluated == 2 * 7
    assert dedup.models_evaluated == 2 * 3


def test_distinct_rows_compares_bits_not_values():
    from peerlearn.compute.evaluator import distinct_rows

    rows = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0], [float("nan"), 2.0]])
    rows = torch.cat([rows, rows[3:]])
    first, inverse = distinct_rows(rows)
    assert first == [0, 1, 3]  # -0.0 is another model's bytes; a NaN row equals its copy
    assert inverse.tolist() == [0, 1, 0, 2, 2]
    assert torch.equal(rows[first][inverse].view(torch.int32), rows.view(torch.int32))


def test_local_test_sets_are_not_deduplicated():
    spec, x, y = make_problem("mlp", n=30, seed=9)
    params = node_params(spec, 1, 0.05).repeat(3, 1)
    local = [np.arange(0, 10), np.arange(10, 30), np.arange(5)]
    ev = BatchedEvaluator(spec, x, y, batch_size=8, node_chunk=2, device=DEVICE)
    got = ev.evaluate(params, test_indices=local)
    assert ev.models_evaluated == 3
    for i, ix in enumerate(local):
        want = direct_metrics(spec, params[i], x[ix], y[ix])
        assert got["acc"][i].item() == pytest.approx(want["acc"], rel=1e-5, abs=1e-6)


def test_large_evaluation_buffers_are_reused_not_faulted_in_again():
    import resource
    import sys

    from peerlearn.compute.memory import keep_large_buffers

    if not sys.platform.startswith("linux") or not keep_large_buffers():
        pytest.skip("glibc only")
    spec, x, y = make_problem("gn_lenet", n=400, seed=3)  # 400 x 32 x 16 x 16 floats: 13 MB
    ev = BatchedEvaluator(spec, x, y, batch_size=400, node_chunk=1)
    params = node_params(spec, 2, 0.05)
    # One torch thread: what torch allocates in its worker threads comes from per-thread arenas,
    # which glibc unmaps whole when they empty, whatever the thresholds (see compute/memory.py);
    # on two threads a call sometimes faulted one 13 MB block (3,200 pages) in again.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ev.evaluate(params)
        faults = []
        for _ in range(3):  # the fewest of three calls: another thread may fault pages meanwhile
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ev.evaluate(params)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    finally:
        torch.set_num_threads(threads)
    assert min(faults) < 1000  # without mallopt: 16,500 per call
