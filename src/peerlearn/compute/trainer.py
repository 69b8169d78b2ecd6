"""Local SGD for many nodes at once.

Any model trains here through ``torch.func`` (``vmap`` of ``grad`` of the model's functional
forward); a model's optional hand-batched hooks (``models/hooks.py``: ``stacked``,
``sgd_step_rows``) replace that generic step when present.

The simulator trains lazily: each node's job is a snapshot of its vector plus the minibatches it
will use, and all pending jobs run together here. Jobs are independent (own start, own batches),
so a batched run gives each job exactly the trajectory it would have alone; ``run_one_reference``
is that "alone" baseline, written the ordinary nn.Module + optimizer way.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from peerlearn.compute.cuda_graph import GraphCaptureError, GraphedSteps
from peerlearn.models.hooks import NO_FAST_PATHS
from peerlearn.models.spec import ModelSpec


@dataclass
class TrainJob:
    """``len(batches)`` SGD steps of one node from ``start``."""

    start: torch.Tensor  # (P,) snapshot of the node's vector when training started
    batches: torch.Tensor  # (steps, B) int64 indices into train_x

    @property
    def steps(self) -> int:
        return int(self.batches.shape[0])


# the most bytes of training samples gathered at once for several steps (``_eager_steps``)
GATHER_BYTES = 8 << 20


class BatchedTrainer:
    """Plain SGD (no momentum, no weight decay) for a set of jobs, batched across jobs.

    ``stacked=False`` ignores the model's hooks: every step goes through the generic path.
    """

    def __init__(
        self,
        spec: ModelSpec,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        *,
        lr: float,
        device: str = "cpu",
        stacked: bool = True,
        max_jobs_per_call: int = 16,
        cuda_graphs: bool = True,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.train_x = train_x.to(self.device)
        self.train_y = train_y.to(self.device)
        self.lr = lr
        self.last_loss: torch.Tensor | None = None

        def loss_fn(vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return spec.loss(spec.forward(vec, x), y)

        # Gradient w.r.t. the flat vector itself: no per-parameter dicts to flatten afterwards.
        self._step_grads = vmap(grad_and_value(loss_fn))
        # hand-batched architectures (grouped convolutions, bmm) beat vmap on CPU; see
        # benchmarks/train_throughput.py and benchmarks/generic_model.py
        self.hooks = spec.hooks if stacked and spec.hooks is not None else NO_FAST_PATHS
        self.stacked = self.hooks.stacked is not None
        # embeddings: update only the rows a batch touches (exactly the dense SGD step)
        self.row_sparse = self.hooks.sgd_step_rows is not None
        # Very wide grouped calls become memory-bound on CPU (60 GN-LeNets in one call train
        # ~25% slower than 16 at a time, benchmarks/train_throughput.py); jobs are independent,
        # so running them in chunks changes nothing in their results.
        self.max_jobs_per_call = max(1, max_jobs_per_call) if device == "cpu" else 1 << 30
        # On a GPU, kernel launches dominate small steps: replay each step as a CUDA graph.
        # (The row-sparse embedding step is already cheap and is left eager.)
        self._graphs: GraphedSteps | None = None
        if cuda_graphs and self.device.type == "cuda" and self.stacked and not self.row_sparse:
            self._graphs = GraphedSteps(self._sgd_step, spec.layout.numel, self.device)

    def _stacked_step(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of J models on their own batches, one backward: one (J, *shape) tensor per
        parameter (in layout order), and the losses (J,).

        Each parameter is its own leaf (a view of ``params``' storage), so autograd hands back
        each gradient as the backward computed it, in whatever strides (a weight used as
        ``w.mT`` gets a transposed one): no copy into a contiguous (J, P) gradient and no
        concatenation, which for small models cost more than the arithmetic.
        """
        assert self.hooks.stacked is not None
        leaves = {
            name: view.detach().requires_grad_(True)
            for name, view in self.spec.layout.unflatten(params).items()
        }
        out = self.hooks.stacked(leaves, x)
        if self.spec.task == "classification":
            per_sample = F.cross_entropy(
                out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none"
            ).view(y.shape)
        else:
            per_sample = (out - y) ** 2
        losses = per_sample.mean(1)  # each model's mean loss over its batch, as spec.loss
        # model j's grads only see loss j
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return list(grads), losses.detach()

    def run(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        """Run every job (in chunks of ``max_jobs_per_call``); see ``_run_chunk``."""
        size = self.max_jobs_per_call
        if len(jobs) <= size:
            return self._run_chunk(jobs)
        results, losses = [], []
        for lo in range(0, len(jobs), size):
            results.append(self._run_chunk(jobs[lo : lo + size]))
            losses.append(self.last_loss)
        self.last_loss = torch.cat(losses)
        return torch.cat(results)

    def _sgd_step(self, params: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """One plain SGD step of J models in place on their (J, B) batches; returns losses."""
        return self._sgd_step_on(params, self.train_x[idx], self.train_y[idx])

    def _sgd_step_on(
        self, params: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        """``_sgd_step`` on the gathered samples ``xb`` (J, B, ...) and labels ``yb`` (J, B)."""
        if self.hooks.sgd_step_rows is not None:
            with torch.no_grad():
                views = self.spec.layout.unflatten(params)
                return self.hooks.sgd_step_rows(views, xb, yb, self.lr)
        if not self.stacked:
            grads, losses = self._step_grads(params, xb, yb)
            params.add_(grads, alpha=-self.lr)  # as torch.optim.SGD does
            return losses.detach()
        pieces, losses = self._stacked_step(params, xb, yb)
        with torch.no_grad():
            # the same p + (-lr) * g per element as one add_ on the whole (J, P) tensor (add_
            # with alpha rounds once, fused, in vectorized and scalar loops alike: tested
            # bit for bit in tests/test_compute.py)
            for view, grad in zip(self.spec.layout.unflatten(params).values(), pieces, strict=True):
                view.add_(grad, alpha=-self.lr)
        return losses

    @torch.inference_mode(False)
    @torch.enable_grad()
    def _run_chunk(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        """Run every job; returns the (J, P) final vectors (on the trainer's device).

        Jobs may have different step counts. They are ordered by decreasing step count, so the
        jobs still active at step t are a prefix of the stack and are updated in place through a
        view. Sets ``last_loss`` to each job's mean training loss over its steps (CPU float32;
        NaN for a job of zero steps).
        """
        n_jobs = len(jobs)
        numel = self.spec.layout.numel
        if n_jobs == 0:
            self.last_loss = torch.empty(0)
            return torch.empty(0, numel, device=self.device)
        steps = torch.tensor([job.steps for job in jobs])
        order = torch.argsort(steps, descending=True, stable=True)
        ordered = [jobs[i] for i in order.tolist()]
        params = torch.stack([job.start.detach().to(self.device, torch.float32) for job in ordered])
        if params.shape[1] != numel:
            raise ValueError(f"job vectors have {params.shape[1]} entries, model needs {numel}")
        loss_sum = torch.zeros(n_jobs, dtype=torch.float64, device=self.device)
        max_steps = int(steps.max())
        sorted_steps = steps[order].tolist()
        # every job's batch indices in one (J, steps, B) tensor, padded and moved once: no
        # per-step gathering of small tensors or host-to-device copies
        all_idx = torch.zeros(n_jobs, max_steps, ordered[0].batches.shape[1], dtype=torch.int64)
        for k, job in enumerate(ordered):
            all_idx[k, : job.steps] = job.batches
        all_idx = all_idx.to(self.device)
        t, active = 0, n_jobs
        while t < max_steps:
            while sorted_steps[active - 1] <= t:
                active -= 1
            end = sorted_steps[active - 1]  # the active prefix is fixed for steps t .. end-1
            if self._graphs is not None:
                try:
                    self._graphs.run(params[:active], all_idx[:active, t:end], loss_sum[:active])
                    t = end
                    continue
                except GraphCaptureError as e:  # raised before anything was modified
                    warnings.warn(f"CUDA graph capture failed, training eagerly: {e}", stacklevel=2)
                    self._graphs = None
            self._eager_steps(params[:active], all_idx[:active, t:end], loss_sum[:active])
            t = end
        mean_loss = (loss_sum.cpu() / steps[order].clamp(min=1)).float()
        mean_loss[steps[order] == 0] = float("nan")
        # Undo the ordering.
        result = torch.empty_like(params)
        result[order.to(self.device)] = params
        self.last_loss = torch.empty(n_jobs)
        self.last_loss[order] = mean_loss
        return result

    def _eager_steps(self, params: torch.Tensor, idx: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Steps ``idx.shape[1]`` of the J models ``params`` in place on their (J, steps, B)
        batches, adding each step's losses to ``loss_sum``.

        The samples of many steps are gathered in one indexing call (step-major, so each step's
        (J, B, ...) block is contiguous, exactly the tensor a per-step gather gives), at most
        ``GATHER_BYTES`` at a time: two fewer small indexing calls per step.
        """
        n_steps = idx.shape[1]
        per_step = idx.shape[0] * idx.shape[2] * self.train_x[:1].nbytes
        block = int(max(1, min(n_steps, GATHER_BYTES // max(per_step, 1))))
        by_step = idx.transpose(0, 1)  # (steps, J, B)
        for lo in range(0, n_steps, block):
            ix = by_step[lo : lo + block]
            xs, ys = self.train_x[ix], self.train_y[ix]
            for k in range(ix.shape[0]):
                loss_sum += self._sgd_step_on(params, xs[k], ys[k])

    @torch.inference_mode(False)
    @torch.enable_grad()
    def run_one_reference(self, job: TrainJob) -> torch.Tensor:
        """The baseline: one node alone, nn.Module + torch.optim.SGD; returns the (P,) result.

        Gradients are switched back on so a caller inside ``no_grad``/``inference_mode`` works.
        """
        module = copy.deepcopy(self.spec.module).to(self.device)
        self.spec.layout.load(module, job.start.to(self.device))
        opt = torch.optim.SGD(module.parameters(), lr=self.lr)
        for batch in job.batches:
            idx = batch.to(self.device)
            opt.zero_grad()
            loss = self.spec.loss(module(self.train_x[idx]), self.train_y[idx])
            loss.backward()
            opt.step()
        return self.spec.layout.flatten(module).to(self.device)
