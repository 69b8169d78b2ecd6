"""One discrete wavelet transform over a whole flat model vector (JWINS's change domain).

JWINS ranks, sends and averages wavelet coefficients of the *concatenated* parameter vector (all
layers together, in layout order), exactly as the reference does with ``pywt.wavedec`` and
``coeffs_to_array``. The coefficient vector is a little longer than the model (boundary
coefficients: 89,843 for GN-LeNet's 89,834 with sym2 at level 4); the inverse truncates back to
the model length. Everything stays float32 (PyWavelets keeps the input precision).
"""

from __future__ import annotations

import warnings

import numpy as np
import pywt


class FlatWavelet:
    """W and W^-1 for vectors of length ``n``; the coefficient layout is fixed at construction."""

    def __init__(
        self, n: int, wavelet: str = "sym2", level: int = 4, mode: str = "symmetric"
    ) -> None:
        if n < 1:
            raise ValueError(f"wavelet transform needs a non-empty vector, got length {n}")
        try:
            self.wavelet = pywt.Wavelet(wavelet)
        except ValueError:
            raise ValueError(
                f"unknown wavelet {wavelet!r}; allowed: discrete wavelets of pywt.wavelist("
                "kind='discrete'), e.g. 'sym2', 'haar', 'db4'"
            ) from None
        self.n = n
        self.level = level
        self.mode = mode
        coeffs = self._wavedec(np.zeros(n, dtype=np.float32))
        arr, self.slices = pywt.coeffs_to_array(coeffs)
        #: number of coefficients (>= n)
        self.length = int(arr.size)

    def _wavedec(self, x: np.ndarray) -> list[np.ndarray]:
        # The reference does not cap the level for small vectors; neither do we (the transform
        # stays exactly invertible), but pywt's "level too high" warning would fire every round.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Level value of", category=UserWarning)
            return pywt.wavedec(x, self.wavelet, mode=self.mode, level=self.level)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Coefficients of the flat vector ``x`` (float32, length ``self.length``)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if x.size != self.n:
            raise ValueError(f"expected a vector of {self.n} values, got {x.size}")
        arr, _ = pywt.coeffs_to_array(self._wavedec(x))
        return arr.astype(np.float32, copy=False)

    def inverse(self, coeffs: np.ndarray) -> np.ndarray:
        """The flat vector (float32, length ``n``) whose coefficients are ``coeffs``."""
        coeffs = np.asarray(coeffs, dtype=np.float32).reshape(-1)
        if coeffs.size != self.length:
            raise ValueError(f"expected {self.length} coefficients, got {coeffs.size}")
        parts = pywt.array_to_coeffs(coeffs, self.slices, output_format="wavedec")
        x = pywt.waverec(parts, self.wavelet, mode=self.mode)
        return np.ascontiguousarray(x[: self.n], dtype=np.float32)
