"""Wire codecs: exact round trips, exact sizes, the Elias-gamma format bit for bit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peerlearn.codecs import elias
from peerlearn.codecs.floats import (
    FPZIP,
    RAW,
    codec_by_id,
    float_codec,
    fpzip_available,
    fpzip_version,
)
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector, bernoulli_mask, mask_indices
from peerlearn.codecs.sparse import SparseVector, SparseVector64

FAST = settings(max_examples=60, deadline=None)
needs_fpzip = pytest.mark.skipif(not fpzip_available(), reason="fpzip not installed")

sorted_indices = st.sets(st.integers(0, 2**32 - 1), max_size=200).map(
    lambda s: np.array(sorted(s), dtype=np.int64)
)
dense_indices = st.sets(st.integers(0, 3000), max_size=2000).map(
    lambda s: np.array(sorted(s), dtype=np.int64)
)
# every float32 bit pattern, NaN payloads and signed zeros included
float_bits = hnp.arrays(np.uint32, st.integers(0, 300)).map(lambda a: a.view(np.float32))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def formula_size(indices: np.ndarray) -> int:
    """4 (count) + 4 (raw first) + 4 (bit count) + ceil(sum over gaps of 2*floor(log2 g) + 1
    bits / 8); the fields after count only when there is something to put in them."""
    idx = [int(i) for i in indices]
    if len(idx) <= 1:
        return 4 + 4 * len(idx)
    bits = sum(2 * ((b - a).bit_length() - 1) + 1 for a, b in itertools.pairwise(idx))
    return 12 + math.ceil(bits / 8)


# --- Elias gamma ------------------------------------------------------------------------------


def test_elias_bytes_by_hand() -> None:
    # gaps 1, 2, 3 -> codes 1 | 010 | 011 -> 7 bits 1010011, padded to 10100110 = 0xA6
    buf = elias.encode(np.array([5, 6, 8, 11]))
    le = [(v).to_bytes(4, "little") for v in (4, 5, 7)]
    assert buf == b"".join(le) + b"\xa6"
    assert elias.encode(np.array([], dtype=np.int64)) == b"\x00\x00\x00\x00"
    assert elias.encode(np.array([7])) == b"\x01\x00\x00\x00\x07\x00\x00\x00"


@FAST
@given(sorted_indices)
def test_elias_round_trip_and_size_formula_sparse(indices: np.ndarray) -> None:
    buf = elias.encode(indices)
    assert len(buf) == formula_size(indices) == elias.encoded_size(indices)
    out, used = elias.decode(buf + b"\xff" * 9)  # whatever follows is not read
    assert used == len(buf)
    assert np.array_equal(out, indices)


@FAST
@given(dense_indices, st.binary(max_size=5))
def test_elias_round_trip_dense_at_offset(indices: np.ndarray, prefix: bytes) -> None:
    buf = elias.encode(indices)
    assert len(buf) == formula_size(indices)
    out, used = elias.decode(prefix + buf, len(prefix))
    assert used == len(buf) and np.array_equal(out, indices)


def test_elias_large_vectorized() -> None:
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(89_843, 30_000, replace=False))
    buf = elias.encode(idx)
    assert len(buf) == formula_size(idx)
    assert np.array_equal(elias.decode(buf)[0], idx)
    every = np.arange(89_843)  # all gaps 1: one bit per index
    assert len(elias.encode(every)) == 12 + math.ceil((every.size - 1) / 8)


def test_elias_rejects_bad_input() -> None:
    for bad in ([3, 3], [4, 2], [-1, 5], [0, 2**32]):
        with pytest.raises(ValueError):
            elias.encode(np.array(bad))
    buf = elias.encode(np.array([1, 1000, 100_000]))
    for cut in (2, 6, 10, len(buf) - 1):
        with pytest.raises(ValueError):
            elias.decode(buf[:cut])
    bad_count = (9).to_bytes(4, "little") + buf[4:]  # more gaps than the bits hold
    with pytest.raises(ValueError):
        elias.decode(bad_count)


# --- floats -----------------------------------------------------------------------------------


@FAST
@given(float_bits)
def test_raw_float_round_trip(values: np.ndarray) -> None:
    buf = RAW.encode(values)
    assert len(buf) == 4 * values.size
    assert same_bits(RAW.decode(buf), values)


@needs_fpzip
@FAST
@given(float_bits)
def test_fpzip_round_trip_is_bit_exact(values: np.ndarray) -> None:
    assert same_bits(FPZIP.decode(FPZIP.encode(values)), values)


@needs_fpzip
def test_fpzip_compresses_model_like_values() -> None:
    values = (np.random.default_rng(1).standard_normal(50_000) * 0.05).astype(np.float32)
    buf = FPZIP.encode(values)
    assert len(buf) < 4 * values.size
    assert same_bits(FPZIP.decode(buf), values)
    assert fpzip_version() is not None


def test_float_codec_choice() -> None:
    assert float_codec("raw") is RAW
    assert float_codec("auto") is (FPZIP if fpzip_available() else RAW)
    if fpzip_available():
        assert float_codec("fpzip") is FPZIP
    else:
        with pytest.raises(RuntimeError):
            float_codec("fpzip")
    assert codec_by_id(RAW.codec_id) is RAW
    with pytest.raises(ValueError):
        codec_by_id(9)


# --- sparse, seed mask --------------------------------------------------------------------------


@FAST
@given(st.data())
def test_sparse_vector_round_trip(data) -> None:
    idx = data.draw(st.lists(st.integers(0, 2**31 - 1), unique=True, max_size=100).map(np.array))
    vals = data.draw(hnp.arrays(np.uint32, idx.size).map(lambda a: a.view(np.float32)))
    degree = data.draw(st.integers(0, 1000))
    p = SparseVector(idx, vals, degree)
    buf = p.encode()
    assert len(buf) == p.nbytes == 8 + 8 * idx.size
    assert p.data_bytes == 4 * idx.size and p.meta_bytes == 8 + 4 * idx.size
    q = SparseVector.decode(buf)
    assert q.degree == degree and np.array_equal(q.indices, idx) and same_bits(q.values, vals)
    wide = SparseVector64(idx, vals, degree)  # the reference CHOCO's int64 indices
    buf = wide.encode()
    assert len(buf) == wide.nbytes == 8 + 12 * idx.size
    assert wide.data_bytes == 4 * idx.size and wide.meta_bytes == 8 + 8 * idx.size
    q = SparseVector64.decode(buf)
    assert type(q) is SparseVector64 and q.degree == degree
    assert np.array_equal(q.indices, idx) and same_bits(q.values, vals)
    if idx.size:  # the widths are not interchangeable
        with pytest.raises(ValueError):
            SparseVector.decode(buf)


@FAST
@given(
    st.integers(0, 2**64 - 1),
    st.floats(0.0, 1.0, exclude_min=True),
    st.integers(0, 500),
    st.integers(0, 64),
)
def test_seed_mask_round_trip(seed: int, fraction: float, n: int, degree: int) -> None:
    x = np.random.default_rng(seed % 1000).standard_normal(n).astype(np.float32)
    p = SeedMaskVector.of(x, seed, fraction, degree)
    buf = p.encode()
    assert len(buf) == p.nbytes == 24 + 4 * p.values.size and p.meta_bytes == 24
    q = SeedMaskVector.decode(buf)
    assert (q.seed, q.fraction, q.n, q.degree) == (seed, fraction, n, degree)
    # the receiver regenerates the very same indices from the seed alone
    assert np.array_equal(q.indices(), np.flatnonzero(bernoulli_mask(seed, n, fraction)))
    assert same_bits(q.values, x[q.indices()])


def test_seed_mask_fraction() -> None:
    assert mask_indices(3, 100, 1.0).size == 100
    share = mask_indices(7, 100_000, 0.25).size / 100_000
    assert abs(share - 0.25) < 0.01
    assert not np.array_equal(mask_indices(1, 1000, 0.5), mask_indices(2, 1000, 0.5))


# --- partial payload (JWINS, TopK, compressed CHOCO) ---------------------------------------------

codecs = [RAW, pytest.param(FPZIP, marks=needs_fpzip)]


@pytest.mark.parametrize("codec", codecs)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_partial_payload_round_trip(codec, data) -> None:
    full = data.draw(st.booleans())
    if full:
        idx = None
        vals = data.draw(float_bits)
    else:
        idx = data.draw(dense_indices)
        vals = data.draw(hnp.arrays(np.uint32, idx.size).map(lambda a: a.view(np.float32)))
    degree = data.draw(st.integers(-5, 100))
    p = PartialPayload(vals, idx, degree, codec)
    buf = p.encode()
    assert len(buf) == p.nbytes == p.data_bytes + p.meta_bytes
    assert p.data_bytes == len(codec.encode(vals))
    assert p.meta_bytes == 5 + (0 if full else formula_size(idx))
    q = PartialPayload.decode(buf)
    assert q.full == full and q.degree == degree and q.codec is codec
    assert same_bits(q.values, vals)
    assert (q.indices is None) if full else np.array_equal(q.indices, idx)
    assert q.encode() == buf
