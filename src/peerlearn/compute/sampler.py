"""Per-node minibatch streams."""

from __future__ import annotations

import numpy as np
import torch


class MinibatchStream:
    """Endless stream of fixed-size minibatches over one node's sample indices.

    Samples are visited in consecutive shuffled passes (epochs). A batch may straddle two passes,
    so every batch has exactly ``batch_size`` samples and every sample is used once per pass.
    If the node holds fewer samples than ``batch_size``, a pass cannot fill a batch; each batch is
    then drawn uniformly with replacement from the node's samples instead.

    Randomness comes from the stream's own generator seeded from (seed, node), so a node's batches
    depend neither on other nodes nor on when (or in what chunks) the batches are taken.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, node: int) -> None:
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.indices.size == 0:
            raise ValueError(f"node {node} has no training samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, node, 0x5A])
        self.with_replacement = self.indices.size < batch_size
        self._order = np.empty(0, dtype=np.int64)  # current pass, shuffled
        self._pos = 0  # next unused position in the current pass

    def state_dict(self) -> dict:
        """Where the stream stands: its generator, the current pass and the position in it."""
        return {"rng": self.rng.bit_generator.state, "order": self._order, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        order = np.asarray(state["order"], dtype=np.int64)
        if not 0 <= int(state["pos"]) <= len(order):
            raise ValueError(f"stream position {state['pos']} outside a pass of {len(order)}")
        self.rng.bit_generator.state = state["rng"]
        self._order = order
        self._pos = int(state["pos"])

    def take(self, steps: int) -> torch.Tensor:
        """The next ``steps`` minibatches: a (steps, batch_size) int64 tensor of sample indices."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        need = steps * self.batch_size
        if self.with_replacement:
            out = self.rng.choice(self.indices, size=need, replace=True)
        else:
            out = np.empty(need, dtype=np.int64)
            filled = 0
            while filled < need:
                if self._pos == len(self._order):
                    self._order = self.rng.permutation(self.indices)
                    self._pos = 0
                n = min(need - filled, len(self._order) - self._pos)
                out[filled : filled + n] = self._order[self._pos : self._pos + n]
                filled += n
                self._pos += n
        return torch.from_numpy(out.reshape(steps, self.batch_size))
