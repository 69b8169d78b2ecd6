"""The header of an fpzip 1.2 stream, read in pure Python so a received blob is checked before
any native code sees it.

fpzip writes its header through its own range coder (``fpzip_write_header`` in LLNL's
``write.cpp``, read back by ``fpzip_read_header`` in ``read.cpp``), so the fields are not at fixed
byte offsets. The fields, in order, with their widths in bits::

    magic  'f' 'p' 'z' '\\0'   4 x 8
    major version 0x110       16
    minor version 1            8
    type (0 float, 1 double)   1
    precision (0 = lossless)   7
    nx, ny, nz, nf            4 x 32

``RangeHeader`` replays fpzip's ``RCdecoder`` (``decode_shift``/``normalize`` on 32-bit
unsigned integers) for exactly these fields, reading only bytes that exist. The encoder of
``codecs.floats.Fpzip`` always writes a float32, lossless, 1-D stream: ``nx`` = number of values,
``ny = nz = nf = 1``; anything else is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerlearn.codecs.message import PayloadError

_MASK = 0xFFFFFFFF
MAGIC = (ord("f"), ord("p"), ord("z"), 0)
MAJOR_VERSION = 0x110
MINOR_VERSION = 1
#: bytes the header reader consumes (its 4-byte look-ahead included); one value fits in them
HEADER_BYTES = 28


@dataclass(frozen=True)
class FpzipHeader:
    type: int
    precision: int
    nx: int
    ny: int
    nz: int
    nf: int

    @property
    def count(self) -> int:
        return self.nx * self.ny * self.nz * self.nf


class _RangeDecoder:
    """fpzip's ``RCdecoder``, enough of it for ``decode<uint>(n)``, bounds-checked."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0
        self.low, self.range, self.code = 0, _MASK, 0
        self._get(4)

    def _get(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise PayloadError("bad_codec_header", "fpzip header truncated")
        for _ in range(n):
            self.code = ((self.code << 8) | self.buf[self.pos]) & _MASK
            self.low = (self.low << 8) & _MASK
            self.pos += 1

    def _normalize(self) -> None:
        while not (self.low ^ ((self.low + self.range) & _MASK)) >> 24:
            self._get(1)
            self.range = (self.range << 8) & _MASK
        if not self.range >> 16:
            self._get(2)
            self.range = -self.low & _MASK

    def _shift(self, n: int) -> int:
        self.range >>= n
        if self.range == 0:  # only a corrupt stream gets here; fpzip would divide by zero
            raise PayloadError("bad_codec_header", "fpzip header corrupt (empty range)")
        value = ((self.code - self.low) & _MASK) // self.range
        self.low = (self.low + self.range * value) & _MASK
        self._normalize()
        return value

    def uint(self, bits: int) -> int:
        """``decode<uint>(bits)``: 16 low bits first when more than 16."""
        if bits > 16:
            low = self._shift(16)
            return (self._shift(bits - 16) << 16) + low
        return self._shift(bits)


def read_header(blob: bytes) -> FpzipHeader:
    """The header fields, after checking magic and version (``PayloadError`` otherwise)."""
    rd = _RangeDecoder(blob)
    if tuple(rd.uint(8) for _ in range(4)) != MAGIC:
        raise PayloadError("bad_codec_header", "not an fpzip stream (magic)")
    major, minor = rd.uint(16), rd.uint(8)
    if (major, minor) != (MAJOR_VERSION, MINOR_VERSION):
        raise PayloadError("bad_codec_header", f"fpzip format version {major:#x}.{minor}")
    kind, precision = rd.uint(1), rd.uint(7)
    nx, ny, nz, nf = (rd.uint(32) for _ in range(4))
    return FpzipHeader(kind, precision, nx, ny, nz, nf)


def check_float32_stream(blob: bytes, max_count: int) -> int:
    """The number of values of a lossless float32 1-D fpzip stream, at most ``max_count``.

    Raises ``PayloadError`` for anything our encoder never writes: another type or precision,
    more than one dimension, no values (an empty array travels as zero bytes) or too many.
    """
    head = read_header(blob)
    if head.type != 0 or head.precision != 0:
        raise PayloadError(
            "bad_codec_header",
            f"fpzip type {head.type} precision {head.precision}, expected float32 lossless (0, 0)",
        )
    if (head.ny, head.nz, head.nf) != (1, 1, 1) or not 1 <= head.nx <= max_count:
        raise PayloadError(
            "bad_codec_header",
            f"fpzip dims {head.nx}x{head.ny}x{head.nz}x{head.nf}, expected n x 1 x 1 x 1 "
            f"with 1 <= n <= {max_count}",
        )
    return head.nx
