"""Test-set evaluation of many nodes at once.

Any model is evaluated batched through ``vmap`` of its functional forward; a model's optional
``stacked`` / ``stacked_shared`` hooks (``models/hooks.py``) replace that when present.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from peerlearn.compute.memory import keep_large_buffers
from peerlearn.models.spec import ModelSpec


def distinct_rows(params: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """The rows of ``params`` (K, P) that are byte-identical to no earlier row, and for every
    row the position of its first copy among them: ``params[first][inverse]`` equals ``params``
    bit for bit.

    Rows are grouped by a hash of their bytes, then compared exactly (as bit patterns, so -0.0
    and 0.0 differ and a NaN equals itself): a hash collision can never merge two models.
    """
    rows = params.detach().cpu().contiguous()
    bits = rows.view(torch.uint8).reshape(rows.shape[0], -1).numpy()
    first: list[int] = []
    by_hash: dict[bytes, list[int]] = {}
    inverse = torch.empty(rows.shape[0], dtype=torch.int64)
    for i in range(rows.shape[0]):
        key = hashlib.blake2b(bits[i].data, digest_size=16).digest()
        same = by_hash.setdefault(key, [])
        for k in same:
            if np.array_equal(bits[first[k]], bits[i]):
                inverse[i] = k
                break
        else:
            same.append(len(first))
            inverse[i] = len(first)
            first.append(i)
    return first, inverse


FUSED_NODE_CHUNK = 2


def default_node_chunk(spec: ModelSpec, one_sample: torch.Tensor, device: torch.device) -> int:
    """Nodes per batched forward when the caller does not say.

    On a GPU, 16: each call is small for the device. On a CPU the arithmetic per sample decides.
    Measured on one thread (docs/performance.md): GN-LeNet (25 MFLOP forward) evaluates 1.44x
    faster one node per call than 16 per grouped convolution, a 50k-parameter MLP is fastest at 4,
    and a 5k-parameter one at 16. So: about 400 kFLOP of forward work per sample across the
    chunk, between 1 and 16 nodes.
    """
    if device.type != "cpu":
        return 16
    if getattr(spec.module, "fused_block", None) is not None:
        # compute.fused: the convolutions are then most of the time, and 2 models per call
        # (one dense first convolution with 2 x 32 filters) ran 1.04-1.05x the rate of 1 in two
        # runs, 4 1.00-1.06x, 8 0.86x (benchmarks/fused_speed.py --node-chunks, one thread);
        # 2 rather than 4: a short W1 on two threads peaked at 1.70 GB instead of 1.92 GB
        return FUSED_NODE_CHUNK
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            spec.module(one_sample)
        flops = counter.get_total_flops()
    except Exception:  # an architecture the counter cannot trace: the GPU default
        return 16
    return int(min(16, max(1, 2 ** round(math.log2(4e5 / max(flops, 1))))))


class BatchedEvaluator:
    """Evaluates (K, P) node vectors on a test set, ``node_chunk`` nodes x ``batch_size`` samples
    per batched forward (``ModelSpec.stacked_forward``), which bounds memory while keeping the
    calls large.

    With ``dedupe`` (the default), models that are byte-identical and see the same test samples
    (the shared test set) are evaluated once and their metrics copied: at t = 0 every node holds
    the same model. ``models_evaluated`` counts the model rows actually run forward.

    On a CPU, building one raises glibc's mmap threshold for the process (``compute/memory.py``):
    activation buffers of large batches are then reused instead of mapped and faulted in anew.
    """

    def __init__(
        self,
        spec: ModelSpec,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
        *,
        batch_size: int = 500,
        node_chunk: int | None = None,
        device: str = "cpu",
        dedupe: bool = True,
    ) -> None:
        if node_chunk is None:
            node_chunk = default_node_chunk(spec, test_x[:1], torch.device(device))
        if batch_size < 1 or node_chunk < 1:
            raise ValueError(
                f"batch_size and node_chunk must be >= 1, got {batch_size}, {node_chunk}"
            )
        self.spec = spec
        self.device = torch.device(device)
        self.test_x = test_x.to(self.device)
        self.test_y = test_y.to(self.device)
        self.batch_size = batch_size
        self.node_chunk = node_chunk
        self.dedupe = dedupe
        if self.device.type == "cpu":
            keep_large_buffers()  # large activations reused, not re-mapped per batch
        self.models_evaluated = 0

    @torch.inference_mode()
    def evaluate(
        self,
        params: torch.Tensor,
        test_indices: Sequence[np.ndarray] | None = None,
        subset: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-node metrics as (K,) float64 CPU tensors.

        ``test_indices``: one index array per node (local test sets, lengths may differ); else
        every node uses the shared test set, restricted to ``subset`` if given.
        Classification: ``acc`` (fraction correct), ``loss`` (mean cross-entropy).
        Regression: ``loss`` (MSE), ``rmse``, ``acc`` (share of predictions that, clipped to
        [0.5, 5] and rounded to the nearest 0.5, equal the rating). A node with no test samples
        gets NaN.
        """
        k = params.shape[0]
        if test_indices is not None and len(test_indices) != k:
            raise ValueError(f"{len(test_indices)} local test sets for {k} nodes")
        if self.dedupe and test_indices is None and k > 1:
            first, inverse = distinct_rows(params)
            if len(first) < k:
                out = self._evaluate(params[first], None, subset)
                return {name: values[inverse] for name, values in out.items()}
        return self._evaluate(params, test_indices, subset)

    def _evaluate(
        self,
        params: torch.Tensor,
        test_indices: Sequence[np.ndarray] | None,
        subset: np.ndarray | None,
    ) -> dict[str, torch.Tensor]:
        k = params.shape[0]
        self.models_evaluated += k
        loss_sum = torch.zeros(k, dtype=torch.float64)
        hit_sum = torch.zeros(k, dtype=torch.float64)
        count = torch.zeros(k, dtype=torch.float64)
        for lo in range(0, k, self.node_chunk):
            hi = min(lo + self.node_chunk, k)
            chunk = params[lo:hi].to(self.device, torch.float32)
            if test_indices is None:
                sums = self._eval_shared(chunk, subset)
            else:
                sums = self._eval_own(chunk, test_indices[lo:hi])
            loss_sum[lo:hi], hit_sum[lo:hi], count[lo:hi] = (s.cpu() for s in sums)
        loss = loss_sum / count  # 0/0 -> NaN for empty test sets
        out = {"loss": loss, "acc": hit_sum / count}
        if self.spec.task == "regression":
            out["rmse"] = loss.sqrt()
        return out

    def _eval_shared(
        self, chunk: torch.Tensor, subset: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = None
        if subset is not None:
            idx = torch.as_tensor(np.asarray(subset, dtype=np.int64), device=self.device)
        total = len(self.test_y) if idx is None else len(idx)
        n = chunk.shape[0]
        loss_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        hit_sum = torch.zeros_like(loss_sum)
        for s in range(0, total, self.batch_size):
            # the whole test set: slices, views of it (no copy of each batch's samples)
            b = slice(s, s + self.batch_size) if idx is None else idx[s : s + self.batch_size]
            out = self.spec.stacked_forward_shared(chunk, self.test_x[b])  # (n, b, ...)
            y = self.test_y[b].expand(n, *self.test_y[b].shape)
            losses, hits = self._per_sample(out, y)
            loss_sum += losses.sum(1)
            hit_sum += hits.sum(1)
        count = torch.full_like(loss_sum, float(total))
        return loss_sum, hit_sum, count

    def _eval_own(
        self, chunk: torch.Tensor, indices: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Pad every node's index list to the longest (with sample 0) and mask the padding out.
        n = chunk.shape[0]
        lengths = [len(ix) for ix in indices]
        width = max(lengths, default=0)
        pad = np.zeros((n, width), dtype=np.int64)
        for i, ix in enumerate(indices):
            pad[i, : len(ix)] = np.asarray(ix, dtype=np.int64)
        idx = torch.from_numpy(pad).to(self.device)
        length = torch.tensor(lengths, device=self.device)
        mask = torch.arange(width, device=self.device)[None, :] < length[:, None]
        loss_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        hit_sum = torch.zeros_like(loss_sum)
        for s in range(0, width, self.batch_size):
            b = idx[:, s : s + self.batch_size]
            m = mask[:, s : s + self.batch_size]
            out = self.spec.stacked_forward(chunk, self.test_x[b])  # own samples per node
            losses, hits = self._per_sample(out, self.test_y[b])
            loss_sum += torch.where(m, losses, 0.0).sum(1)
            hit_sum += torch.where(m, hits, 0.0).sum(1)
        return loss_sum, hit_sum, length.to(torch.float64)

    def _per_sample(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nodes, batch) per-sample loss and hit (1.0/0.0), in float64."""
        if self.spec.task == "classification":
            flat = out.reshape(-1, out.shape[-1])
            loss = F.cross_entropy(flat, y.reshape(-1), reduction="none").view(y.shape)
            hit = out.argmax(-1) == y
        else:
            loss = (out - y) ** 2
            rounded = torch.round(out.clamp(0.5, 5.0) * 2) / 2
            hit = rounded == y
        return loss.double(), hit.double()
