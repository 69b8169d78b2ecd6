"""Elias-gamma coding of sorted indices: the metadata codec of JWINS.

Partial sharing sends a sorted set of coordinates. Their gaps are small positive integers when many
coordinates are sent, and Elias gamma spends 2*floor(log2 g) + 1 bits on a gap g, so the indices
cost a few bits each instead of 32 (the reference's ``Elias`` compressor does the same).

Wire format (exact, little-endian)::

    uint32 count                      number of indices
    uint32 first                      the first index, raw          (only if count >= 1)
    uint32 nbits                      length of the bit stream      (only if count >= 2)
    bits                              gamma codes of the count-1 gaps, MSB first, zero-padded
                                      to a whole byte                (only if count >= 2)

so with B = sum over gaps of (2*floor(log2 g) + 1) bits,
``len = 4 + [count >= 1] * 4 + [count >= 2] * (4 + ceil(B / 8))``. ``nbits`` (= B) bounds the
decoder to the stream (the reference stores its bit count too), so a payload can carry more data
right after it. Indices must be strictly increasing and lie in [0, 2**32).

Both directions are vectorized with numpy: encoding scatters every value bit at once; decoding
finds the code boundaries (an inherently sequential chain) by pointer doubling in sqrt-sized
blocks, so even ~90k indices take a few milliseconds.
"""

from __future__ import annotations

import math
import struct

import numpy as np

_U32 = struct.Struct("<I")
_MAX_INDEX = 2**32 - 1


def _floor_log2(values: np.ndarray) -> np.ndarray:
    """floor(log2 v) for positive integers < 2**53, exactly (frexp, not float log2)."""
    return (np.frexp(values.astype(np.float64))[1] - 1).astype(np.int64)


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of the given (positive) lengths: each element's segment id and offset."""
    owner = np.repeat(np.arange(lengths.size), lengths)
    starts = np.cumsum(lengths) - lengths
    return owner, np.arange(owner.size) - starts[owner]


def gamma_bits(gaps: np.ndarray) -> int:
    """Bits the gamma codes of these gaps (all >= 1) take: sum of 2*floor(log2 g) + 1."""
    gaps = np.asarray(gaps, dtype=np.int64)
    return int((2 * _floor_log2(gaps) + 1).sum()) if gaps.size else 0


def encoded_size(indices: np.ndarray) -> int:
    """``len(encode(indices))`` without encoding."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size <= 1:
        return 4 + 4 * idx.size
    return 12 + math.ceil(gamma_bits(np.diff(idx)) / 8)


def encode(indices: np.ndarray) -> bytes:
    """Encode strictly increasing indices in [0, 2**32) (see the module doc for the format)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    head = _U32.pack(idx.size)
    if idx.size == 0:
        return head
    if idx[0] < 0 or idx[-1] > _MAX_INDEX:
        raise ValueError("Elias-coded indices must lie in [0, 2**32)")
    gaps = np.diff(idx)
    if gaps.size and gaps.min() < 1:
        raise ValueError("Elias-coded indices must be strictly increasing")
    head += _U32.pack(int(idx[0]))
    if gaps.size == 0:
        return head
    lg = _floor_log2(gaps)
    code_len = 2 * lg + 1
    code_start = np.cumsum(code_len) - code_len
    # each code is lg zeros then the lg+1 bits of the gap, MSB first: scatter the value bits
    owner, offset = _segments(lg + 1)
    lg_o = lg[owner]
    n_bits = int(code_len.sum())
    if n_bits > _MAX_INDEX:
        raise ValueError("Elias bit stream too long for its uint32 length field")
    bits = np.zeros(n_bits, dtype=np.uint8)
    bits[code_start[owner] + lg_o + offset] = (gaps[owner] >> (lg_o - offset)) & 1
    return head + _U32.pack(n_bits) + np.packbits(bits).tobytes()


def max_bits(limit: int) -> int:
    """An upper bound on ``nbits`` for strictly increasing indices in [0, limit).

    With gaps summing to less than ``limit``, the bits are largest for equal gaps g, at most
    limit * max over g of (2 log2 g + 1) / g = 1.501 * limit (at g = 1.92); 2 * limit + 64 leaves
    room, so an honest block always passes and a forged one cannot ask for more memory.
    """
    return 2 * limit + 64


def decode(
    buf: bytes | memoryview, offset: int = 0, *, limit: int | None = None
) -> tuple[np.ndarray, int]:
    """Decode the indices starting at ``offset``; returns (int64 indices, bytes consumed).

    ``limit``: indices must lie in [0, limit); the count and bit length are checked against it
    before anything is allocated (the decoder's work arrays are ~64 bytes per bit).
    """
    if len(buf) - offset < 4:
        raise ValueError("Elias block truncated (no count)")
    (count,) = _U32.unpack_from(buf, offset)
    if limit is not None and count > limit:
        raise ValueError(f"Elias block of {count} indices, at most {limit} allowed")
    if count == 0:
        return np.empty(0, dtype=np.int64), 4
    if len(buf) - offset < 8:
        raise ValueError("Elias block truncated (no first index)")
    (first,) = _U32.unpack_from(buf, offset + 4)
    n_gaps = count - 1
    if limit is not None and first >= limit:
        raise ValueError(f"Elias block starts at index {first}, limit {limit}")
    if n_gaps == 0:
        return np.array([first], dtype=np.int64), 8
    if len(buf) - offset < 12:
        raise ValueError("Elias block truncated (no bit count)")
    (n_bits,) = _U32.unpack_from(buf, offset + 8)
    if limit is not None and n_bits > max_bits(limit):
        raise ValueError(f"Elias block of {n_bits} bits, more than {limit} indices can take")
    n_bytes = math.ceil(n_bits / 8)
    if len(buf) - offset - 12 < n_bytes:
        raise ValueError("Elias block truncated (bit stream shorter than its length)")
    if n_bits < n_gaps:
        raise ValueError("Elias block malformed (fewer bits than gaps)")
    raw = np.frombuffer(buf, dtype=np.uint8, count=n_bytes, offset=offset + 12)
    bits = np.unpackbits(raw)[:n_bits]
    starts, lead, lg = _code_boundaries(bits, n_gaps)
    if lg.max() > 31:
        raise ValueError("Elias block malformed (a gap of 2**32 or more)")
    owner, off = _segments(lg + 1)
    contrib = bits[lead[owner] + off].astype(np.int64) << (lg[owner] - off)
    gaps = np.add.reduceat(contrib, np.cumsum(lg + 1) - (lg + 1))
    indices = np.empty(count, dtype=np.int64)
    indices[0] = first
    np.cumsum(gaps, out=indices[1:])
    indices[1:] += first
    top = _MAX_INDEX if limit is None else limit - 1
    if indices[-1] > top:
        raise ValueError(f"Elias block decodes to index {indices[-1]} > {top}")
    if int(starts[-1] + 2 * lg[-1] + 1) != n_bits:
        raise ValueError("Elias block malformed (codes do not fill the stated bit count)")
    return indices, 12 + n_bytes


def _code_boundaries(bits: np.ndarray, n_codes: int) -> tuple[np.ndarray, ...]:
    """Start bit, leading-1 bit and floor(log2 g) of each of the first ``n_codes`` codes.

    A code starting at p has its leading 1 at q = next_one(p), so the next code starts at
    f(p) = 2q - p + 1. The starts are the orbit of 0 under f, computed by pointer doubling:
    f^B (B a power of two near sqrt(n)) gives every B-th start, then B vector steps fill in.
    """
    n_bits = bits.size
    pos = np.arange(n_bits + 1)
    # next_one[p]: the first 1 at or after p (n_bits if none), by a reversed running minimum
    next_one = np.where(np.append(bits, 1).astype(bool), pos, n_bits)
    next_one = np.minimum.accumulate(next_one[::-1])[::-1]
    step = np.minimum(2 * next_one - pos + 1, n_bits)  # n_bits is absorbing: "ran off the end"
    block = 1 << max(0, math.ceil(math.log2(math.sqrt(n_codes))))
    jump = step
    for _ in range(block.bit_length() - 1):
        jump = jump[jump]
    n_blocks = -(-n_codes // block)
    coarse = np.empty(n_blocks, dtype=np.int64)
    p = 0
    for i in range(n_blocks):
        coarse[i] = p
        p = int(jump[p])
    grid = np.empty((block, n_blocks), dtype=np.int64)
    cur = coarse
    for j in range(block):
        grid[j] = cur
        cur = step[cur]
    starts = grid.T.reshape(-1)[:n_codes]
    lead = next_one[starts]
    lg = lead - starts
    if (lead + lg >= n_bits).any():
        raise ValueError("Elias block truncated (a gamma code runs past the data)")
    return starts, lead, lg
