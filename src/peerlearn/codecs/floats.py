"""Lossless float32 array codecs: fpzip where it is installed, raw little-endian otherwise.

JWINS sends its values through fpzip at precision 0 (lossless), as the reference's
``EliasFpzip`` does. fpzip is an optional C extension, so the codec is chosen at run time:
``"auto"`` takes fpzip when it imports *and* round-trips a probe bit-exactly, else raw float32.
The choice is visible (``FloatCodec.name``, ``fpzip_version()``) so a run can record it, and
each encoded blob is tagged with the codec id by the payload that carries it, so a receiver never
has to guess (and a deployed receiver accepts only its run's codec, see ``deploy.wire``).

Decoding counts first: ``count`` reads how many values a blob declares, checking its framing, so a
receiver can compare that with what it expects before decoding anything. ``Fpzip.decode`` runs
fpzip's C decoder in this process, which reads past its input and indexes its tables with
decoded symbols unchecked: a corrupt body (even under a valid header) can crash the process. It is
for blobs this process made; received ones go through ``deploy.decoder.SandboxedFpzip``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cache
from typing import Literal

import numpy as np

from peerlearn.codecs.fpzip_header import check_float32_stream
from peerlearn.codecs.message import PayloadError

FloatCodecChoice = Literal["auto", "fpzip", "raw"]


class FloatCodec(ABC):
    """Encodes a 1-D float32 array to bytes and back, bit-exactly (NaN payloads included)."""

    #: stored in payload headers so the receiver picks the same decoder
    codec_id: int
    name: str

    @abstractmethod
    def encode(self, values: np.ndarray) -> bytes: ...

    @abstractmethod
    def count(self, buf: bytes, max_count: int) -> int:
        """How many values ``buf`` holds, at most ``max_count``, from its framing alone."""

    @abstractmethod
    def decode(self, buf: bytes, count: int | None = None) -> np.ndarray:
        """The values; ``count`` (checked) is what the caller expects, if it knows."""


def _check_decoded(values: np.ndarray, count: int) -> np.ndarray:
    if values.size != count:
        raise PayloadError("bad_count", f"decoded {values.size} values, expected {count}")
    return values


class RawFloat32(FloatCodec):
    """4 bytes per value, little-endian: the fallback and the size every saving is measured by."""

    codec_id = 0
    name = "raw"

    def encode(self, values: np.ndarray) -> bytes:
        return np.ascontiguousarray(values, dtype="<f4").tobytes()

    def count(self, buf: bytes, max_count: int) -> int:
        if len(buf) % 4:
            raise PayloadError("bad_count", f"raw float32 blob of {len(buf)} bytes")
        if len(buf) // 4 > max_count:
            raise PayloadError("bad_count", f"{len(buf) // 4} raw values > {max_count}")
        return len(buf) // 4

    def decode(self, buf: bytes, count: int | None = None) -> np.ndarray:
        n = self.count(buf, len(buf) // 4) if count is None else count
        if len(buf) != 4 * n:
            raise PayloadError("bad_count", f"raw float32 blob of {len(buf)} bytes, {n} expected")
        return np.frombuffer(buf, dtype="<f4").astype(np.float32)


class Fpzip(FloatCodec):
    """fpzip at precision 0 (lossless). An empty array encodes to no bytes (fpzip's own header
    for an empty array would be ~100 bytes of nothing)."""

    codec_id = 1
    name = "fpzip"

    def encode(self, values: np.ndarray) -> bytes:
        import fpzip

        arr = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        return b"" if arr.size == 0 else bytes(fpzip.compress(arr, precision=0, order="C"))

    def count(self, buf: bytes, max_count: int) -> int:
        return check_float32_stream(buf, max_count) if buf else 0

    def decode(self, buf: bytes, count: int | None = None) -> np.ndarray:
        """In-process native decoding: only for blobs this process made (see the module doc)."""
        import fpzip

        n = self.count(buf, 2**31 - 1)
        if count is not None and n != count:
            raise PayloadError("bad_count", f"fpzip stream of {n} values, expected {count}")
        if not buf:
            return np.empty(0, dtype=np.float32)
        out = fpzip.decompress(bytes(buf), order="C")
        return _check_decoded(np.ascontiguousarray(out, dtype=np.float32).reshape(-1), n)


RAW = RawFloat32()
FPZIP = Fpzip()
_BY_ID: dict[int, FloatCodec] = {RAW.codec_id: RAW, FPZIP.codec_id: FPZIP}


@cache
def fpzip_version() -> str | None:
    """The installed fpzip's version if it imports and round-trips a probe exactly, else None."""
    try:
        import fpzip
    except ImportError:
        return None
    probe = np.array([0.0, -0.0, 1.5, -3.25e-8, np.inf, np.nan, 1e-45, 3.4e38], dtype=np.float32)
    probe = np.concatenate([probe, np.linspace(-1, 1, 257, dtype=np.float32)])
    try:
        back = FPZIP.decode(FPZIP.encode(probe))
    except Exception:
        return None
    if back.shape != probe.shape or not np.array_equal(back.view(np.uint32), probe.view(np.uint32)):
        return None
    return str(getattr(fpzip, "__version__", "unknown"))


def fpzip_available() -> bool:
    return fpzip_version() is not None


def float_codec(choice: FloatCodecChoice = "auto") -> FloatCodec:
    """The codec for a config choice; ``"fpzip"`` fails loudly where fpzip is unusable."""
    if choice == "raw":
        return RAW
    if choice == "fpzip":
        if not fpzip_available():
            raise RuntimeError(
                "float_codec 'fpzip' asked for, but fpzip is not installed or does not round-trip "
                "exactly here; use 'auto' (falls back to raw float32) or 'raw'"
            )
        return FPZIP
    if choice == "auto":
        return FPZIP if fpzip_available() else RAW
    raise ValueError(f"unknown float codec {choice!r}; allowed: 'auto', 'fpzip', 'raw'")


def codec_by_id(codec_id: int) -> FloatCodec:
    """The codec a received blob was written with."""
    try:
        codec = _BY_ID[codec_id]
    except KeyError:
        raise ValueError(f"unknown float codec id {codec_id}") from None
    if codec is FPZIP and not fpzip_available():
        raise RuntimeError("received an fpzip-coded payload, but fpzip is not usable here")
    return codec
