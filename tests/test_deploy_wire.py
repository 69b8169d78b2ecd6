"""The deployed wire format: exact round trips of every payload type, and every rejection."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
import torch

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.floats import RAW
from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import HEADER, HEADER_BYTES, MAGIC, WIRE_VERSION, Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector
from peerlearn.codecs.sparse import SparseVector, SparseVector64
from peerlearn.deploy.process import parse_hosts, parse_ids
from peerlearn.deploy.wire import (
    WireError,
    WireLimits,
    algorithm_payloads,
    decode_message,
    default_max_bytes,
    encode_message,
    payload_types,
)

P = 50  # model size of these tests
ALL = frozenset(payload_types().values())


def limits(node: int = 1, allowed=ALL, max_bytes: int | None = None) -> WireLimits:
    return WireLimits(node, 4, P, allowed, max_bytes or default_max_bytes(P))


def payloads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(P).astype(np.float32)
    idx = np.array([1, 7, 20, 49])
    return {
        "dense": DenseVector(torch.from_numpy(x), degree=3),
        "fragment": FragmentPayload(2, torch.from_numpy(x[:12])),
        "fragment_empty": FragmentPayload(0, torch.zeros(0)),
        "partial": PartialPayload(x[idx], idx, 2, RAW),
        "partial_full": PartialPayload(x, None, 2, RAW),
        "sparse": SparseVector(idx, x[idx], 5),
        "sparse64": SparseVector64(idx, x[idx], 5),
        "seedmask": SeedMaskVector.of(x, seed=12345, fraction=0.3, degree=1),
    }


def _values(p) -> np.ndarray:
    v = p.values
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


@pytest.mark.parametrize("name", list(payloads()))
def test_round_trip_every_payload_type(name: str) -> None:
    payload = payloads()[name]
    kind = "fragment" if isinstance(payload, FragmentPayload) else "model"
    msg = Message(0, 1, kind, 17, payload)
    frame = encode_message(msg)
    assert len(frame) == msg.nbytes  # the simulator counts exactly these bytes
    got = decode_message(frame, limits(), identity=0)
    assert (got.src, got.dst, got.kind, got.iteration) == (0, 1, kind, 17)
    assert type(got.payload) is type(payload)
    np.testing.assert_array_equal(_values(got.payload), _values(payload))
    assert got.payload.encode() == payload.encode()


def test_every_algorithm_has_payload_types() -> None:
    from peerlearn.components import ALGORITHMS

    for name in ALGORITHMS.names():
        allowed = algorithm_payloads(name)
        assert allowed and allowed <= ALL, name


def _frame(**over) -> bytes:
    msg = Message(0, 1, "fragment", 3, FragmentPayload(1, torch.ones(5)))
    frame = bytearray(encode_message(msg))
    fields = dict(
        zip(
            ("magic", "version", "kind", "src", "dst", "it", "len"),
            HEADER.unpack_from(frame),
            strict=True,
        )
    )
    fields.update(over)
    HEADER.pack_into(frame, 0, *fields.values())
    return bytes(frame)


@pytest.mark.parametrize(
    ("frame", "identity", "reason"),
    [
        (b"", 0, "malformed"),
        (b"garbage" * 3, 0, "malformed"),
        (_frame(magic=b"XX"), 0, "bad_magic"),
        (_frame(version=WIRE_VERSION + 1), 0, "bad_version"),
        (_frame(src=9), None, "bad_sender"),
        (_frame(src=1), None, "bad_sender"),  # a node never receives from itself
        (_frame(src=2), 0, "spoofed_sender"),
        (_frame(dst=2), 0, "bad_receiver"),
        (_frame(len=999), 0, "malformed"),
        (_frame(it=-1), 0, "malformed"),
        (_frame(kind=0x2F), 0, "bad_type"),
        (_frame(kind=0x92), 0, "bad_type"),
        (_frame()[:-3], 0, "malformed"),
    ],
)
def test_rejections(frame: bytes, identity: int | None, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode_message(frame, limits(), identity=identity)
    assert err.value.reason == reason


def test_oversized_is_rejected_before_parsing() -> None:
    frame = _frame()
    with pytest.raises(WireError, match="oversized"):
        decode_message(frame + b"\0" * 100, limits(max_bytes=len(frame) + 10), identity=0)


def test_payload_type_must_belong_to_the_algorithm() -> None:
    frame = encode_message(Message(0, 1, "model", 0, DenseVector(torch.zeros(P))))
    with pytest.raises(WireError) as err:
        decode_message(frame, limits(allowed=algorithm_payloads("divshare")), identity=0)
    assert err.value.reason == "bad_type"


def _raw(kind_byte: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, WIRE_VERSION, kind_byte, 0, 1, 0, len(body)) + body


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        # fragment that announces more values than it carries
        (_raw(0x22, struct.pack("<II", 0, 10) + b"\0" * 8), "undecodable"),
        # dense vector of the wrong length
        (encode_message(Message(0, 1, "model", 0, DenseVector(torch.zeros(P + 1)))), "bad_range"),
        # sparse index beyond the model
        (
            encode_message(Message(0, 1, "model", 0, SparseVector([3, P], [1.0, 2.0]))),
            "bad_range",
        ),
        # duplicate sparse indices
        (encode_message(Message(0, 1, "model", 0, SparseVector([3, 3], [1.0, 2.0]))), "bad_range"),
        # NaN values
        (
            encode_message(
                Message(0, 1, "fragment", 0, FragmentPayload(0, torch.tensor([np.nan])))
            ),
            "not_finite",
        ),
        # seed mask over another model size
        (
            encode_message(Message(0, 1, "model", 0, SeedMaskVector.of(np.ones(P + 3), 1, 0.5))),
            "bad_range",
        ),
        # seed mask whose value count does not match its mask
        (_raw(0x51, struct.pack("<iQdI", 0, 1, 0.5, P) + b"\0" * 4), "bad_range"),
        # truncated partial payload
        (_raw(0x31, b"\x01"), "undecodable"),
    ],
)
def test_payload_checks(frame: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode_message(frame, limits(), identity=0)
    assert err.value.reason == reason


def test_random_garbage_never_raises_anything_else() -> None:
    rng = np.random.default_rng(1)
    good = _frame()
    for _ in range(500):
        frame = bytearray(good)
        for pos in rng.integers(0, len(frame), size=3):
            frame[pos] = rng.integers(0, 256)
        with contextlib.suppress(WireError):
            decode_message(bytes(frame), limits(), identity=0)


def test_header_size_unchanged() -> None:
    assert HEADER_BYTES == 28


def test_parse_ids_and_hosts(tmp_path) -> None:
    assert parse_ids("0,2,5-7") == [0, 2, 5, 6, 7]
    path = tmp_path / "hosts"
    path.write_text("# two machines\n10.0.0.1 0-1\n10.0.0.2 2,3  # second\n")
    assert parse_hosts(path, 4) == {0: "10.0.0.1", 1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.2"}
    from peerlearn.config import ConfigError

    with pytest.raises(ConfigError, match="no host"):
        parse_hosts(path, 5)
