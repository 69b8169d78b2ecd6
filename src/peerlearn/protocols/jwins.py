"""JWINS (Dhasade et al., ICDCS'23): partial sharing in the wavelet domain with a random cut-off.

Each round, after local training, a node draws alpha uniformly from ``alpha_list`` (its own
generator, so neighbours send different amounts in the same round). alpha >= metadata_cap sends
every wavelet coefficient; otherwise it sends the current coefficients W(x) at the round(alpha*L)
positions (L = wavelet length) with the largest |W(x - x_prev) + A|, Elias-coded, values through
the float codec, and zeroes A there. A receiver fills what a neighbour did not send with its own
coefficients, averages in the wavelet domain with Metropolis-Hastings weights and inverts. After
averaging, A += W(x_new - p); p = x_new; x_prev = x_new (the authors' configs:
accumulation + accumulate_averaging_changes). Because W is linear and exactly invertible, alpha = 1
everywhere is D-PSGD.

The round machinery and the accumulator live in ``PartialSharing`` (``protocols/sparse.py``);
this class adds the wavelet and the randomized cut-off. See ``docs/algorithms_sparse.md``.
"""

from __future__ import annotations

import numpy as np

from peerlearn.protocols.base import default_params
from peerlearn.protocols.sparse import PartialSharing
from peerlearn.protocols.wavelet import FlatWavelet


class JWINS(PartialSharing):
    name = "jwins"
    description = (
        "JWINS: wavelet-domain partial sharing ranked by accumulated change, random cut-off, "
        "Elias+fpzip wire format"
    )
    accumulation = True
    accumulate_averaging_changes = True

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        params = default_params("jwins", params)
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)

    def setup_transform(self) -> None:
        self.wavelet = FlatWavelet(self.n, self.params.wavelet, self.params.level)
        self.length = self.wavelet.length

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.wavelet.forward(x)

    def inverse(self, c: np.ndarray) -> np.ndarray:
        return self.wavelet.inverse(c)

    def draw_alpha(self) -> float:
        if self.params.fixed_alpha is not None:
            return float(self.params.fixed_alpha)
        choices = self.params.alpha_list
        return float(choices[int(self.ctx.rng.integers(len(choices)))])

    @property
    def metadata_cap(self) -> float:
        return self.params.metadata_cap
