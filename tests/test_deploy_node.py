"""One real node in this process, attacked over loopback: it must count and drop, never crash.

The node's peers do not exist, so these tests also show that an asynchronous node keeps training
alone and that a synchronous one (D-PSGD) stops with "stalled" instead of hanging.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import Message
from peerlearn.deploy.node import NodeRuntime, identity_of
from peerlearn.deploy.process import endpoints, generate_keys, load_keys
from peerlearn.deploy.wire import encode_message
from peerlearn.experiment import build_setup
from tests.conftest import small


def free_port_base(n: int) -> int:
    """A base port whose next n ports were free a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def _cfg(algorithm: str, *extra: str):
    return small(
        "nodes=3",
        "topology.kind=full",
        f"algorithm.name={algorithm}",
        f"deploy.base_port={free_port_base(3)}",
        "stop.virtual_time_s=30",
        "eval.every_s=0.5",
        *extra,
    )


def _runtime(cfg, tmp_path: Path, ctx, keys_dir: Path | None = None) -> NodeRuntime:
    setup = build_setup(cfg)
    keys, pub = load_keys(keys_dir, 0, cfg.nodes) if keys_dir else (None, None)
    rt = NodeRuntime(
        setup,
        0,
        ctx=ctx,
        endpoints=endpoints(cfg, None),
        bind="127.0.0.1",
        start_at=time.time(),
        out_dir=tmp_path,
        executor=ThreadPoolExecutor(max_workers=1),
        keys=keys,
        public_to_node=pub,
    )
    rt.warm_up()
    rt.open_sockets()
    return rt


def _valid_fragment(rt: NodeRuntime, src: int, *, length: int | None = None) -> bytes:
    k = 0
    n = rt.proto.frag_len[k] if length is None else length
    return encode_message(Message(src, 0, "fragment", 1, FragmentPayload(k, torch.zeros(n))))


def _dealer(ctx, identity: bytes | None, endpoint: str, keys=None) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        server, public, secret = keys
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, public, secret
    sock.connect(endpoint)
    return sock


def test_garbage_is_counted_and_dropped(tmp_path: Path) -> None:
    cfg = _cfg("divshare", "algorithm.fragments=2", "algorithm.fanout=1")

    async def scenario():
        ctx = zmq.asyncio.Context()
        rt = _runtime(cfg, tmp_path, ctx)
        run = asyncio.create_task(rt.run())
        ep = rt.endpoints[0]
        as1 = _dealer(ctx, identity_of(1), ep)
        anon = _dealer(ctx, None, ep)
        big = rt.limits.max_bytes
        await as1.send(b"complete nonsense")
        await as1.send(b"\0" * (big + 1))  # oversized, still below ZeroMQ's own cut-off
        await as1.send_multipart([b"two", b"frames"])
        await as1.send(_valid_fragment(rt, 2))  # header claims node 2 on node 1's connection
        await as1.send(_valid_fragment(rt, 1, length=3))  # wrong fragment length: protocol
        await anon.send(_valid_fragment(rt, 1))  # no identity: ZeroMQ made one up
        await as1.send(_valid_fragment(rt, 1))  # the only good one
        # a raw TCP client speaking no ZeroMQ at all
        _, writer = await asyncio.open_connection("127.0.0.1", int(ep.rsplit(":", 1)[1]))
        writer.write(b"\xff" * 4096)
        await writer.drain()
        await asyncio.sleep(1.5)
        alive = not run.done()
        rt.stop("test")
        stats = await run
        writer.close()
        for s in (as1, anon):
            s.close()
        ctx.term()
        return alive, stats

    alive, stats = asyncio.run(scenario())
    assert alive
    assert stats.rejected == {
        "malformed": 2,
        "oversized": 1,
        "spoofed_sender": 1,
        "protocol": 1,
        "unknown_identity": 1,
    }
    assert stats.messages_received == 2  # the good one, and the one the protocol refused
    # alone (its peers never came up), an asynchronous node keeps training
    assert stats.iterations >= 2
    assert stats.stop_reason == "test"
    # its peers are down, so its fragments waited in the process; each flush really dropped them
    assert stats.messages_dropped > 0 and stats.bytes_dropped > 0
    assert (tmp_path / "node-0.json").exists() and (tmp_path / "node-0.csv").exists()


def test_curve_keeps_out_nodes_without_keys(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    generate_keys(keys_dir, 3)
    cfg = _cfg("divshare", "algorithm.fragments=2", "algorithm.fanout=1")
    cfg.deploy.keys_dir = str(keys_dir)
    out = tmp_path / "out"
    out.mkdir()

    async def scenario():
        ctx = zmq.asyncio.Context()
        auth = AsyncioAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(keys_dir))
        rt = _runtime(cfg, out, ctx, keys_dir)
        run = asyncio.create_task(rt.run())
        ep = rt.endpoints[0]
        server = rt.keys.peers[0]
        p1, s1 = zmq.auth.load_certificate(keys_dir / "node-1.key_secret")
        stranger_pub, stranger_sec = zmq.curve_keypair()
        plain = _dealer(ctx, identity_of(1), ep)  # no encryption at all
        stranger = _dealer(ctx, identity_of(1), ep, (server, stranger_pub, stranger_sec))
        impostor = _dealer(ctx, identity_of(2), ep, (server, p1, s1))  # node 1's key as 2
        honest = _dealer(ctx, identity_of(1), ep, (server, p1, s1))
        for sock in (plain, stranger):
            await sock.send(_valid_fragment(rt, 1))
        await impostor.send(_valid_fragment(rt, 2))
        await honest.send(_valid_fragment(rt, 1))
        await asyncio.sleep(1.5)
        rt.stop("test")
        stats = await run
        for s in (plain, stranger, impostor, honest):
            s.close()
        auth.stop()
        ctx.term()
        return stats

    stats = asyncio.run(scenario())
    assert stats.messages_received == 1  # only the honest node 1
    assert stats.rejected == {"spoofed_sender": 1}


def test_synchronous_node_without_peers_reports_a_stall(tmp_path: Path) -> None:
    cfg = _cfg("dpsgd", "deploy.stall_timeout_s=0.5")

    async def scenario():
        ctx = zmq.asyncio.Context()
        rt = _runtime(cfg, tmp_path, ctx)
        t0 = time.monotonic()
        stats = await asyncio.wait_for(rt.run(), timeout=20)
        ctx.term()
        return stats, time.monotonic() - t0

    stats, took = asyncio.run(scenario())
    assert stats.stop_reason == "stalled"
    assert stats.train_jobs == 1  # trained once, then waited for models that never came
    assert stats.iterations == 0
    assert took < 10


def test_drop_pending_removes_only_what_has_not_left(tmp_path: Path) -> None:
    from collections import deque

    from peerlearn.deploy.node import _Outgoing
    from peerlearn.protocols.base import DropPending

    cfg = _cfg("divshare")
    rt = NodeRuntime(
        build_setup(cfg),
        0,
        ctx=None,
        endpoints=endpoints(cfg, None),
        bind="127.0.0.1",
        start_at=time.time(),
        out_dir=tmp_path,
        executor=ThreadPoolExecutor(max_workers=1),
    )
    for peer in (1, 2):
        rt.queues[peer] = deque(
            _Outgoing(it, b"x" * 10, 6, 4, "fragment", 0.0) for it in (0, 1, 2, 3)
        )
    rt._act(DropPending(before_iteration=2))
    assert [m.iteration for m in rt.queues[1]] == [2, 3]
    assert (rt.stats.messages_dropped, rt.stats.bytes_dropped) == (4, 40)
    rt._act(DropPending())
    assert not any(rt.queues.values())
    assert rt.stats.messages_dropped == 8


def test_emulated_compute_pads_training_to_the_simulated_time(tmp_path: Path) -> None:
    cfg = _cfg(
        "divshare",
        "compute.step_time_s=0.2",
        "train.local_steps=3",
        "deploy.emulate_compute=true",
    )

    async def scenario():
        ctx = zmq.asyncio.Context()
        rt = _runtime(cfg, tmp_path, ctx)
        run = asyncio.create_task(rt.run())
        await asyncio.sleep(1.5)
        rt.stop("test")
        stats = await run
        ctx.term()
        return stats

    stats = asyncio.run(scenario())
    assert 1 <= stats.train_jobs <= 3  # 0.6 s per local training, not a few milliseconds


def test_a_steady_stream_of_messages_does_not_stop_training(tmp_path: Path) -> None:
    cfg = _cfg("divshare", "algorithm.fragments=2", "algorithm.fanout=1")
    during: list[int] = []

    async def scenario():
        ctx = zmq.asyncio.Context()
        rt = _runtime(cfg, tmp_path, ctx)
        frame = _valid_fragment(rt, 1)
        ep = rt.endpoints[0]

        def blast() -> None:  # as fast as ZeroMQ takes them, for 3 s, from another thread
            sctx = zmq.Context()
            sock = sctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, identity_of(1))
            sock.connect(ep)
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                try:
                    sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    time.sleep(0.0005)
            during.append(rt.proto.iteration)  # what the node achieved under the stream
            sock.close()
            sctx.term()

        run = asyncio.create_task(rt.run())
        sender = threading.Thread(target=blast)
        sender.start()
        while sender.is_alive():
            await asyncio.sleep(0.1)
        rt.stop("test")
        stats = await run
        ctx.term()
        return stats

    stats = asyncio.run(scenario())
    assert stats.messages_received > 1000 and stats.rejected == {}
    assert during[0] >= 3  # it trained and aggregated while the messages kept coming
