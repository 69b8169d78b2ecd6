"""Forged and mutated frames into a deployed node's receive path: counted, dropped, never fatal.

The corpus and the drawn frames are in ``tests/receive_fuzz.py``. Everything that can reach fpzip's
C decoder runs in a subprocess here, so that a regression (fpzip decoding in the node's own
process again) fails these tests instead of killing pytest.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlearn.codecs import elias
from peerlearn.codecs.floats import FPZIP, RAW, fpzip_available
from peerlearn.codecs.fpzip_header import check_float32_stream, read_header
from peerlearn.codecs.message import Message, PayloadError
from peerlearn.codecs.partial import PartialPayload
from peerlearn.deploy.node import ROWS_IN_MEMORY
from peerlearn.deploy.wire import WireError, WireLimits, decode_message, payload_types
from peerlearn.deploy.wire import encode_message as encode
from tests import receive_fuzz as rf

ROOT = Path(__file__).resolve().parents[1]
needs_fpzip = pytest.mark.skipif(not fpzip_available(), reason="fpzip not installed")
FPZIP_RUNS = ("jwins", "topk", "choco_compress")


def run_fuzz(*args: str, timeout: float = 120) -> dict:
    """``python -m tests.receive_fuzz ARGS`` in a subprocess; a crash fails with its signal."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.receive_fuzz", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"fuzz process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- fpzip's header, read in Python ------------------------------------------------------------


@needs_fpzip
@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    double=st.booleans(),
    precision=st.sampled_from([0, 8, 20]),
)
def test_header_reader_reads_what_fpzip_wrote(shape, double, precision) -> None:
    import fpzip

    data = np.ones(shape, np.float64 if double else np.float32)
    blob = bytes(fpzip.compress(data, precision=precision, order="C"))
    head = read_header(blob)
    assert head.type == int(double) and head.precision == precision
    assert head.count == data.size
    ours = FPZIP.encode(data.astype(np.float32))  # float32, lossless, n x 1 x 1 x 1
    assert check_float32_stream(ours, data.size) == data.size
    if double or precision or (head.ny, head.nz, head.nf) != (1, 1, 1):
        with pytest.raises(PayloadError) as err:
            check_float32_stream(blob, data.size)
        assert err.value.reason == "bad_codec_header"


@needs_fpzip
def test_header_checks_reject_before_any_native_code() -> None:
    blob = FPZIP.encode(np.arange(100, dtype=np.float32))
    assert check_float32_stream(blob, 100) == 100
    cases = {
        "truncated": blob[:27],
        "not an fpzip stream": b"\0" * 40,
        "magic": bytes([blob[0] ^ 0x80]) + blob[1:],
        "dims": blob,  # 100 values where at most 99 are expected
    }
    for what, bad in cases.items():
        with pytest.raises(PayloadError, match=what.split()[0]) as err:
            check_float32_stream(bad, 100 if what != "dims" else 99)
        assert err.value.reason == "bad_codec_header"


def test_elias_limit_is_checked_before_allocating() -> None:
    huge = struct.pack("<III", 2**32 - 1, 0, 2**32 - 1)  # 4 G indices in a 12-byte block
    with pytest.raises(ValueError, match="at most"):
        elias.decode(huge, limit=1000)
    many_bits = struct.pack("<III", 10, 0, 10**6) + b"\xff" * (10**6 // 8)
    with pytest.raises(ValueError, match="bits"):
        elias.decode(many_bits, limit=1000)
    idx = np.array([3, 70, 999])
    assert np.array_equal(elias.decode(elias.encode(idx), limit=1000)[0], idx)
    with pytest.raises(ValueError):
        elias.decode(elias.encode(idx), limit=999)
    # the bound on the bit length holds for the worst honest case (gaps of 1 and 2)
    worst = np.cumsum(np.tile([1, 2], 5000))
    assert elias.encoded_size(worst) * 8 <= elias.max_bits(int(worst[-1]) + 1) + 12 * 8


# -- the run's codec only ----------------------------------------------------------------------


@needs_fpzip
def test_a_raw_run_never_decodes_an_fpzip_frame(monkeypatch) -> None:
    import fpzip

    def boom(*_, **__):
        raise AssertionError("fpzip.decompress called on a frame of a raw run")

    monkeypatch.setattr(fpzip, "decompress", boom)
    vals = np.linspace(0, 1, 10, dtype=np.float32)
    limits = WireLimits(1, 4, 50, frozenset(payload_types().values()), 10_000, RAW)
    for codec, full in ((FPZIP, True), (FPZIP, False)):
        payload = PartialPayload(vals, None if full else np.arange(10), 1, codec)
        with pytest.raises(WireError) as err:
            decode_message(encode(Message(0, 1, "model", 0, payload)), limits, identity=0)
        assert err.value.reason == "wrong_codec"
    raw = PartialPayload(vals, np.arange(10), 1, RAW)
    got = decode_message(encode(Message(0, 1, "model", 0, raw)), limits, identity=0)
    assert np.array_equal(got.payload.values, vals)


def test_partial_counts_must_agree_before_decoding() -> None:
    vals = np.ones(4, np.float32)
    body = rf.partial_body(0x00, elias.encode(np.arange(5)), RAW.encode(vals))
    with pytest.raises(PayloadError) as err:
        PartialPayload.decode(body, codec=RAW, max_values=100)
    assert err.value.reason == "bad_count"
    full = rf.partial_body(0x01, b"", RAW.encode(np.ones(101, np.float32)))
    with pytest.raises(PayloadError) as err:
        PartialPayload.decode(full, codec=RAW, max_values=100)
    assert err.value.reason == "bad_count"


# -- the original crash class ------------------------------------------------------------------


@needs_fpzip
def test_the_crafted_blob_kills_fpzip_in_process() -> None:
    """Why received fpzip runs in a child: a valid header over 34 random bytes segfaults
    fpzip 1.2's decoder, so no check before the call can make it safe."""
    blob = rf.crafted_fpzip_blob(340)  # what the frame of the next test carries
    code = f"import fpzip; fpzip.decompress(bytes.fromhex('{blob.hex()}'), order='C')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode != 0  # a signal (SIGSEGV) here; in no case a clean decode


@needs_fpzip
def test_crafted_fpzip_frame_to_a_topk_node_is_dropped_and_counted() -> None:
    out = run_fuzz("--reproduce")
    fp, raw = out["topk"], out["topk_raw"]
    assert fp["frame_bytes"] == raw["frame_bytes"] == 95
    # fpzip run: the child decoder crashed or refused it; the node lives on and decodes the
    # next valid frames (through a fresh child if the last one died)
    assert sum(fp["rejected"].values()) == 1
    assert set(fp["rejected"]) <= {"decoder_crashed", "undecodable"}
    assert fp["valid_accepted"] == fp["valid_sent"] >= 1
    assert fp["inbox_values"] and all(n > 0 for n in fp["inbox_values"])
    # raw run: the fpzip flag alone gets it dropped, nothing is decoded
    assert raw["rejected"] == {"wrong_codec": 1}
    assert raw["valid_accepted"] == raw["valid_sent"]


# -- the whole receive path ------------------------------------------------------------------


@needs_fpzip
def test_mutation_corpus_of_every_algorithm() -> None:
    out = run_fuzz()
    for name in rf.ALGORITHMS:
        r = out[name]
        assert r["handled_all"], f"{name}: a frame was neither accepted nor rejected"
        assert set(r["rejected"]) <= rf.REASONS, name
        assert r["received"] >= 1, f"{name}: its own valid frames were refused"
        assert r["rejected"]["oversized"] == 3 and r["rejected"]["malformed"] > 0, name
        # passes 2 and 3 repeat pass 1: nothing may accumulate (queues are full by then)
        assert r["growth_bytes"] < 256 * 1024, f"{name}: {r['growth_bytes']} bytes more"
        assert r["inbox"] <= 2 and r["queued"] <= rf.MAX_QUEUE, name
        assert r["rows"] < ROWS_IN_MEMORY, name
    for name in FPZIP_RUNS:
        got = out[name]["rejected"]
        assert got["wrong_codec"] > 0 and got["bad_codec_header"] > 0 and got["bad_count"] > 0
    assert out["topk_raw"]["rejected"]["wrong_codec"] > 0


@needs_fpzip
def test_drawn_frames_into_fpzip_nodes() -> None:
    out = run_fuzz("--hypothesis", "100", *FPZIP_RUNS)
    for name in FPZIP_RUNS:
        assert out[name]["examples"] >= 100, name


@pytest.mark.parametrize("name", ["dpsgd", "divshare", "topk_raw", "subsampling", "choco"])
def test_drawn_frames_into_raw_nodes(name: str) -> None:
    """No native decoder is reachable in these runs, so they are fuzzed in this process."""
    out = rf.hypothesis_fuzz(name, 80)
    assert out["examples"] >= 80


def test_forged_future_rounds_are_not_buffered(tmp_path) -> None:
    with rf.receiver("topk_raw") as rt:
        frame = rf.valid_frames(rt)[0]
        for it in range(ROWS_IN_MEMORY + 100):
            rf.feed(rt, rf.set_header(frame, iteration=it))
        assert set(rt.proto.inbox) <= {0, 1}
        assert rt.stats.messages_received == ROWS_IN_MEMORY + 100
        # every ignored message is a metric row: they go to disk, not into memory forever
        assert len(rt.rows) < ROWS_IN_MEMORY
        assert rt.csv_path.exists()
