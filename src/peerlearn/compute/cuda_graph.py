"""Replaying one batched SGD step as a CUDA graph.

A GN-LeNet step of 60 nodes at batch 8 launches about a hundred small kernels; on a GPU the
launches, not the arithmetic, set the pace (on an H100, replaying was 1.5-1.7x faster than
launching, docs/performance.md).
A graph is captured once per (number of jobs, batch size) and replayed every step on static
buffers. Job counts are rounded up to a multiple of ``BUCKET`` (the extra rows train a copy of
the first job and are dropped), so a simulation whose pending job count varies needs few graphs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

BUCKET = 8
MAX_GRAPHS = 8  # each holds its own activation memory


class GraphCaptureError(RuntimeError):
    """The step could not be captured; nothing was modified, the caller can run it eagerly."""


StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (params, idx) -> losses
Replay = Callable[[], None]
# records fn (which works on static buffers) once and returns what replays it
Capture = Callable[[Callable[[], None], torch.device], Replay]


def cuda_capture(fn: Callable[[], None], device: torch.device) -> Replay:
    """Capture ``fn`` as a CUDA graph; its replay reruns the same kernels on the same buffers."""
    try:
        # warm-up on a side stream (library handles, autograd state), as capture requires
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as e:
        raise GraphCaptureError(str(e)) from e
    return graph.replay


def eager_replay(fn: Callable[[], None], device: torch.device) -> Replay:
    """No graph: "replaying" calls ``fn``. Lets the buffer logic be tested without a GPU."""
    return fn


class _Captured:
    """Static buffers for ``jobs`` jobs at batch ``batch`` and the replay of one step on them."""

    def __init__(
        self,
        step: StepFn,
        jobs: int,
        batch: int,
        numel: int,
        device: torch.device,
        capture: Capture,
    ) -> None:
        self.params = torch.zeros(jobs, numel, device=device)
        self.idx = torch.zeros(jobs, batch, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros(jobs, dtype=torch.float64, device=device)

        def once() -> None:
            self.loss_sum.add_(step(self.params, self.idx))

        self.replay = capture(once, device)


class GraphedSteps:
    """Runs ``steps`` SGD steps of a fixed set of jobs by replaying captured graphs."""

    def __init__(
        self, step: StepFn, numel: int, device: torch.device, capture: Capture = cuda_capture
    ) -> None:
        self.step = step
        self.capture = capture
        self.numel = numel
        self.device = device
        self._graphs: OrderedDict[tuple[int, int], _Captured] = OrderedDict()

    def _get(self, jobs: int, batch: int) -> _Captured:
        key = (jobs, batch)
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            if len(self._graphs) >= MAX_GRAPHS:
                self._graphs.popitem(last=False)
            self._graphs[key] = _Captured(
                self.step, jobs, batch, self.numel, self.device, self.capture
            )
        return self._graphs[key]

    def run(self, params: torch.Tensor, idx: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """``params`` (J, P) updated in place over ``idx`` (J, steps, B); losses added to
        ``loss_sum`` (J,)."""
        n, steps, batch = idx.shape
        g = self._get(-(-n // BUCKET) * BUCKET, batch)
        g.params[:n].copy_(params)
        g.params[n:].copy_(params[:1].expand(len(g.params) - n, -1))
        g.idx[n:].zero_()
        g.loss_sum.zero_()
        for s in range(steps):
            g.idx[:n].copy_(idx[:, s])
            g.replay()
        params.copy_(g.params[:n])
        loss_sum.add_(g.loss_sum[:n])
