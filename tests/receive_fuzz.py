"""Fuzzing a deployed node's receive path: real frames of every algorithm, and their mutations.

A ``NodeRuntime`` (node 0 of a 3-node full graph) is built without sockets; frames go straight
into ``handle_frames``, the function its ZeroMQ receiver calls. Valid frames come from node 1's
own protocol object (started, then told its training is done: the payloads it would send).

Run as a script (``python -m tests.receive_fuzz``) it feeds the deterministic corpus to a node
of every algorithm and prints one JSON line of what each node counted; the tests run it in a
subprocess, so that a native decoder crashing would fail a test instead of killing pytest.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import fpzip
import numpy as np
import torch
import zmq.asyncio

from peerlearn.codecs import elias
from peerlearn.codecs.floats import FPZIP, RAW
from peerlearn.codecs.message import HEADER, HEADER_BYTES, Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.deploy.node import NodeRuntime, identity_of
from peerlearn.deploy.wire import encode_message
from peerlearn.experiment import build_setup
from peerlearn.protocols.base import Send, Started, TrainingDone
from tests.conftest import small

#: every reason a frame may be dropped for; anything else is a bug
REASONS = frozenset(
    {
        "oversized", "malformed", "bad_magic", "bad_version", "unknown_identity", "bad_sender",
        "spoofed_sender", "bad_receiver", "bad_type", "undecodable", "bad_range", "not_finite",
        "protocol", "wrong_codec", "bad_codec_header", "bad_count", "decoder_crashed",
        "decoder_timeout",
    }
)  # fmt: skip

#: (name, config overrides): one node per algorithm and payload type
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "dpsgd": ("algorithm.name=dpsgd",),
    "divshare": ("algorithm.name=divshare", "algorithm.fragments=2", "algorithm.fanout=2"),
    "swift": ("algorithm.name=swift",),
    "adpsgd": ("algorithm.name=adpsgd",),
    "jwins": ("algorithm.name=jwins", "algorithm.float_codec=fpzip"),
    "topk": ("algorithm.name=topk", "algorithm.float_codec=fpzip"),
    "topk_raw": ("algorithm.name=topk", "algorithm.float_codec=raw"),
    "subsampling": ("algorithm.name=subsampling",),
    "choco": ("algorithm.name=choco",),
    "choco_compress": ("algorithm.name=choco", "algorithm.compress=true",
                       "algorithm.float_codec=fpzip"),
}  # fmt: skip


class Frame:
    """What ``handle_frames`` reads of a ``zmq.Frame``."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    def get(self, _: str) -> None:
        return None


#: frames queued per peer: AD-PSGD answers every ping, and its replies to a peer that never
#: reads wait in the node up to this many (the memory bound the tests check)
MAX_QUEUE = 32


def config(name: str):
    return small(
        "nodes=3",
        "topology.kind=full",
        "stop.virtual_time_s=30",
        f"deploy.max_queue={MAX_QUEUE}",
        *ALGORITHMS[name],
    )


@contextmanager
def receiver(name: str) -> Iterator[NodeRuntime]:
    """Node 0 of algorithm ``name``, inside a running event loop (its sends create tasks)."""
    cfg = config(name)
    setup = build_setup(cfg)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    ctx = zmq.asyncio.Context()
    with tempfile.TemporaryDirectory() as tmp:
        rt = loop.run_until_complete(_make(setup, ctx, Path(tmp)))
        try:
            yield rt
        finally:
            tasks = list(rt.tasks)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            rt.close_sockets()
            ctx.term()
            loop.close()
            asyncio.set_event_loop(None)


async def _make(setup, ctx, out: Path) -> NodeRuntime:
    return NodeRuntime(
        setup,
        0,
        ctx=ctx,
        endpoints={i: f"tcp://127.0.0.1:{1 + i}" for i in range(setup.cfg.nodes)},
        bind="127.0.0.1",
        start_at=time.time(),
        out_dir=out,
        executor=ThreadPoolExecutor(max_workers=1),
    )


def feed(rt: NodeRuntime, frame: bytes, sender: int = 1) -> None:
    rt.handle_frames([Frame(identity_of(sender)), Frame(frame)])


def handled(rt: NodeRuntime) -> int:
    """Frames the node accounted for: accepted or rejected (a frame the protocol refused counts
    as received, then as rejected for "protocol")."""
    return rt.stats.messages_received + sum(rt.rejected.values()) - rt.rejected["protocol"]


def valid_frames(rt: NodeRuntime) -> list[bytes]:
    """What node 1 of the same run sends (re-addressed to node 0), encoded."""
    peer = rt.setup.protocol(1, rt.setup.model.init_vector().clone())
    actions = peer.handle(Started())
    actions += peer.handle(TrainingDone(rt.cfg.train.local_steps))
    frames = []
    for a in actions:
        if isinstance(a, Send):
            frames.append(encode_message(Message(1, 0, a.kind, a.iteration, a.payload)))
    if not frames:
        raise AssertionError(f"{rt.cfg.algorithm.name}: node 1 sent nothing")
    return frames


def set_header(frame: bytes, **fields: int) -> bytes:
    names = ("magic", "version", "kind", "src", "dst", "iteration", "length")
    values = dict(zip(names, HEADER.unpack_from(frame), strict=True))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + frame[HEADER_BYTES:]


def header_mutations(frame: bytes) -> Iterator[bytes]:
    """Truncations, wrong length fields, unknown kinds and payload types, bad ids."""
    for cut in sorted({0, 1, 27, 28, 29, 33, len(frame) // 2, len(frame) - 1}):
        if cut < len(frame):
            yield frame[:cut]
    yield frame + b"\0" * 7
    for length in (len(frame) - HEADER_BYTES + 1, 2**63, 2**64 - 1):
        yield set_header(frame, length=length)
    kind_byte = frame[3]
    for kind in (0, 6, 15):
        yield set_header(frame, kind=(kind_byte & 0xF0) | kind)
    for ptype in (0, 6, 15):
        yield set_header(frame, kind=(ptype << 4) | (kind_byte & 0x0F))
    for other in range(1, 6):  # every other payload type: its decoder sees a foreign body
        yield set_header(frame, kind=(((kind_byte >> 4) + other) % 5 + 1) << 4 | kind_byte & 0xF)
    yield set_header(frame, src=0)
    yield set_header(frame, src=2)  # not the connection's identity
    yield set_header(frame, dst=2)
    yield set_header(frame, iteration=-1)
    yield set_header(frame, iteration=2**62)
    yield set_header(frame, version=9)
    yield b"XX" + frame[2:]


def bit_flips(frame: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """Single-bit flips, mostly in the payload, and a few random byte overwrites."""
    for i in range(n):
        buf = bytearray(frame)
        if i % 4 == 3:
            for _ in range(int(rng.integers(2, 9))):
                buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        else:
            lo = HEADER_BYTES if i % 2 else 0
            pos = int(rng.integers(lo, len(buf)))
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        yield bytes(buf)


def _partial_frame(payload_bytes: bytes, iteration: int = 0) -> bytes:
    """A model frame from node 1 whose body is ``payload_bytes`` (a partial payload)."""
    head = HEADER.pack(b"PL", 1, 1 | (3 << 4), 1, 0, iteration, len(payload_bytes))
    return head + payload_bytes


def partial_body(flags: int, index_blob: bytes, value_blob: bytes, degree: int = 2) -> bytes:
    return struct.pack("<iB", degree, flags) + index_blob + value_blob


def fpzip_mutations(numel: int, rng: np.random.Generator, n_body: int) -> Iterator[bytes]:
    """Partial payloads with forged fpzip blobs: headers of every wrong kind, then valid headers
    over corrupt bodies (which crash fpzip's C decoder most of the time)."""
    n = max(8, numel // 4)
    idx = np.sort(rng.choice(numel, n, replace=False))
    vals = (rng.standard_normal(n) * 0.05).astype(np.float32)
    index_blob = elias.encode(idx)
    good = FPZIP.encode(vals)
    fp = 0x10  # codec id 1 in the high nibble
    yield partial_body(fp, index_blob, good)  # a valid one among them
    yield partial_body(fp, index_blob, FPZIP.encode(vals[:-1]))  # header count != Elias count
    for forged in (vals[: n // 2 * 2].reshape(-1, 2), vals.astype(np.float64)):  # dims, type
        yield partial_body(fp, index_blob, bytes(fpzip.compress(forged, order="C")))
    yield partial_body(fp, index_blob, bytes(fpzip.compress(vals, precision=16, order="C")))
    big = np.zeros(3 * numel + 5000, np.float32)  # more values than any payload may carry
    yield partial_body(fp | 1, b"", FPZIP.encode(big))
    yield partial_body(fp, index_blob, good[:10])  # header truncated
    yield partial_body(fp, index_blob, b"")
    yield partial_body(fp, index_blob, RAW.encode(vals))  # raw bytes under the fpzip flag
    yield partial_body(0x00, index_blob, good)  # fpzip bytes under the raw flag
    for cid in (2, 7, 15):
        yield partial_body(cid << 4, index_blob, good)
    yield partial_body(fp | 0x02, index_blob, good)  # undefined flag bit
    yield partial_body(fp, struct.pack("<III", 2**32 - 1, 0, 2**32 - 1), good)  # huge Elias
    for i in range(n_body):  # valid header, corrupt body
        body = bytearray(good)
        if i % 3 == 0:
            for _ in range(int(rng.integers(1, 8))):
                body[int(rng.integers(28, len(body)))] = int(rng.integers(0, 256))
        elif i % 3 == 1:
            body = body[: int(rng.integers(28, len(body)))]
        else:
            body[28:] = rng.integers(0, 256, len(body) - 28, dtype=np.uint8).tobytes()
        yield partial_body(fp, index_blob, bytes(body))


def corpus(rt: NodeRuntime, seed: int = 0, flips: int = 60, fpzip_bodies: int = 12) -> list:
    """The deterministic corpus for this node's algorithm (every frame addressed to it)."""
    rng = np.random.default_rng(seed)
    frames: list[bytes] = []
    for frame in valid_frames(rt):
        frames.append(frame)
        frames.extend(header_mutations(frame))
        frames.extend(bit_flips(frame, rng, flips))
    frames.append(b"\0" * (rt.limits.max_bytes + 1))
    if PartialPayload in rt.limits.allowed:
        body = fpzip_mutations(rt.numel, rng, fpzip_bodies)
        frames.extend(_partial_frame(b) for b in body)
    return frames


def run_corpus(name: str, passes: int = 3) -> dict:
    """Feed the corpus ``passes`` times; what the node counted, and its memory growth."""
    with receiver(name) as rt:
        frames = corpus(rt)
        tracemalloc.start()
        sizes = []
        for _ in range(passes):
            for frame in frames:
                feed(rt, frame)
            sizes.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        ok = handled(rt) == passes * len(frames)
        return {
            "frames": len(frames) * passes,
            "handled_all": ok,
            "received": rt.stats.messages_received,
            "rejected": dict(rt.rejected),
            "growth_bytes": sizes[-1] - sizes[0],
            "rows": len(rt.rows),
            "inbox": len(getattr(rt.proto, "inbox", ())),
            "queued": max((len(q) for q in rt.queues.values()), default=0),
            "decoder_restarts": rt.decoder.restarts if rt.decoder else 0,
        }


# -- hypothesis: frames drawn field by field ----------------------------------------------------


def frame_strategy(valid: list[bytes], numel: int):
    """Valid frames with drawn damage, and partial payloads built from drawn parts."""
    from hypothesis import strategies as st

    def flipped(frame: bytes, flips: list[tuple[int, int]]) -> bytes:
        buf = bytearray(frame)
        for pos, bit in flips:
            buf[pos % len(buf)] ^= 1 << bit
        return bytes(buf)

    some_valid = st.sampled_from(valid)
    damaged = st.builds(
        flipped,
        some_valid,
        st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 7)), max_size=6),
    )
    truncated = st.builds(lambda f, cut: f[: cut % len(f)], some_valid, st.integers(0, 2**20))
    header = st.builds(
        lambda kind, src, dst, it, body, fix_len, length: HEADER.pack(
            b"PL", 1, kind, src, dst, it, len(body) if fix_len else length
        ) + body,
        st.integers(0, 255), st.sampled_from([-1, 0, 1, 2, 3, 2**31 - 1]),
        st.sampled_from([0, 1, -5]), st.integers(-2, 2**62), st.binary(max_size=300),
        st.booleans(), st.integers(0, 2**64 - 1),
    )  # fmt: skip

    def fpzip_blob(count: int, tail: bytes, keep: bool) -> bytes:
        good = FPZIP.encode(np.linspace(-1, 1, count, dtype=np.float32))
        return good if keep else good[:28] + tail

    count = st.integers(1, numel)
    partial = st.builds(
        lambda flags, count, tail, keep, it: _partial_frame(
            partial_body(flags, b"" if flags & 1 else elias.encode(np.arange(count)),
                         fpzip_blob(count, tail, keep)),
            it,
        ),
        st.sampled_from([0x10, 0x11, 0x00, 0x01, 0x12, 0xF1]), count,
        st.binary(max_size=200), st.booleans(), st.integers(0, 2),
    )  # fmt: skip
    return st.one_of(damaged, truncated, header, partial)


def hypothesis_fuzz(name: str, examples: int) -> dict:
    """Drawn frames into node 0 of ``name``; every one must be accounted for exactly once."""
    from hypothesis import HealthCheck, given, settings

    with receiver(name) as rt:
        strategy = frame_strategy(valid_frames(rt), rt.numel)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples every run: a CI failure reproduces
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def check(frame: bytes) -> None:
            before = handled(rt)
            feed(rt, frame)
            assert handled(rt) == before + 1, "a frame was neither accepted nor rejected"
            assert set(rt.rejected) <= REASONS, f"unknown reasons {set(rt.rejected) - REASONS}"
            assert len(getattr(rt.proto, "inbox", ())) <= 2

        check()
        return {"examples": handled(rt), "rejected": dict(rt.rejected)}


# -- the original crash: a 95-byte frame to a TopK node ----------------------------------------


def crafted_fpzip_blob(numel: int, size: int = 62) -> bytes:
    """A valid fpzip header for ``numel`` float32 values (what a full TopK share declares), then
    random bytes: every check before the decoder passes, and fpzip's C decoder crashes on it."""
    head = FPZIP.encode(np.zeros(numel, np.float32))[:28]
    return head + np.random.default_rng(0).integers(0, 256, size - 28, dtype=np.uint8).tobytes()


def crafted_frame(numel: int) -> bytes:
    """95 bytes: 28 header, 5 partial head (flags: full share, fpzip), 62 of fpzip blob."""
    return _partial_frame(partial_body(0x11, b"", crafted_fpzip_blob(numel)))


def reproduce() -> dict:
    """The crafted frame, then a valid one, to a TopK node with fpzip and to one with raw."""
    out = {}
    for name in ("topk", "topk_raw"):
        with receiver(name) as rt:
            frame = crafted_frame(rt.numel)
            feed(rt, frame)
            after_crash = dict(rt.rejected)
            good = valid_frames(rt)
            for f in good:
                feed(rt, f)
            out[name] = {
                "frame_bytes": len(frame),
                "rejected": after_crash,
                "valid_accepted": rt.stats.messages_received,
                "valid_sent": len(good),
                "inbox_values": [p.values.size for p in rt.proto.inbox.get(0, {}).values()],
            }
    return out


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args and args[0] == "--reproduce":
        out = reproduce()
    elif args and args[0] == "--hypothesis":
        out = {name: hypothesis_fuzz(name, int(args[1])) for name in args[2:]}
    else:
        out = {name: run_corpus(name) for name in args or list(ALGORITHMS)}
    out["_wall_s"] = time.perf_counter() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
