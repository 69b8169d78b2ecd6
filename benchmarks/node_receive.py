"""How many messages/s and bytes/s one deployed node can receive, check, decode and aggregate.

The receiver is a real ``NodeRuntime`` running DivShare on digits with an MLP (node 0, in this
process, on an asyncio loop, one torch thread): it trains as fast as it can and aggregates what
it received once per iteration, exactly as in ``peerlearn deploy``. S sender processes
(multiprocessing, spawn) each hold DEALERs whose routing identities are valid peer ids and blast
pre-encoded, valid DivShare fragment frames (``FragmentPayload`` + ``encode_message``, addressed to
node 0, values taken from the model) as fast as ZeroMQ takes them. The receiver is measured over a
steady window (after a warm-up): accepted messages/s and MB/s, rejected frames (must be 0),
iterations (= aggregations) in the window and the copies each aggregation folded in.

Side by side, the same frames from the same senders into a plain ROUTER that only receives
(blocking pyzmq, no checks, no decoding): the raw socket rate, and the fraction of it the node
keeps. The node's own sends go to peers that are not running: they are encoded and queued, and
flushed by DivShare at each iteration, never transmitted.

    python benchmarks/node_receive.py [--hidden 64 256,128 1024,1024] [--senders 1 2]
        [--seconds 8] [--fragments 10] [--json out.json] [--quick]

MB are 10^6 bytes of peerlearn frames (header + payload, as ``bytes_received`` counts them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import zmq

RCVHWM = 1000  # the node's default (deploy.rcvhwm), also used for the plain ROUTER


# -- sender processes (spawned: only zmq is imported at module level) -------------------------


def _sender(
    endpoint: str,
    frames_by_id: dict[int, list[bytes]],
    ready,
    go,
    stop,
    results,
) -> None:
    """One process: a DEALER per identity, round-robin over identities and fragments."""
    ctx = zmq.Context()
    socks = []
    sent = 0
    nbytes = 0
    try:
        for node, _ in frames_by_id.items():
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, str(node).encode())
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDTIMEO, 200)  # a blocked send still sees the stop flag
            s.connect(endpoint)
            socks.append(s)
        frames = list(frames_by_id.values())
        ready.set()
        go.wait()
        i = 0
        n_frag = len(frames[0])
        while not stop.is_set():
            for _ in range(64):  # check the stop flag every 64 rounds
                for s, fr in zip(socks, frames, strict=True):
                    f = fr[i % n_frag]
                    try:
                        s.send(f, copy=False)
                    except zmq.Again:  # the receiver pushes back (or is gone): check stop
                        continue
                    sent += 1
                    nbytes += len(f)
                i += 1
                if stop.is_set():
                    break
    except zmq.ZMQError:
        pass
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()
        results.put((os.getpid(), sent, nbytes))


class Senders:
    """S spawned sender processes; ``close`` stops and reaps every one of them."""

    def __init__(self, endpoint: str, frames_by_sender: list[dict[int, list[bytes]]]) -> None:
        mpc = mp.get_context("spawn")
        self.go, self.stop = mpc.Event(), mpc.Event()
        self.results = mpc.Queue()
        self.readies = [mpc.Event() for _ in frames_by_sender]
        self.procs = [
            mpc.Process(
                target=_sender,
                args=(endpoint, frames, ready, self.go, self.stop, self.results),
                daemon=True,
            )
            for frames, ready in zip(frames_by_sender, self.readies, strict=True)
        ]
        self.totals: list[tuple[int, int, int]] = []
        self.closed = False

    def start(self, timeout_s: float = 60.0) -> None:
        for p in self.procs:
            p.start()
        for ready, p in zip(self.readies, self.procs, strict=True):
            if not ready.wait(timeout_s):
                raise RuntimeError(f"sender {p.pid} did not start (exit code {p.exitcode})")
        time.sleep(0.2)  # let the connections and identity handshakes complete
        self.go.set()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        self.go.set()  # a sender still waiting for go must not hang
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        while len(self.totals) < len(self.procs):
            try:
                self.totals.append(self.results.get(timeout=0.5))
            except Exception:
                break
        self.results.close()
        self.results.join_thread()


# -- the experiment -------------------------------------------------------------------------


def _config(hidden: list[int], fragments: int, n_nodes: int, base_port: int):
    from peerlearn.config import load_config

    return load_config(
        None,
        [
            "name=node-receive",
            f"nodes={n_nodes}",
            "data.dataset=digits",
            "data.partition=iid",
            f"model.hidden={json.dumps(hidden)}",
            "topology.kind=full",
            "network.preset=uniform",
            "network.stragglers=0",
            "algorithm.name=divshare",
            f"algorithm.fragments={fragments}",
            "algorithm.fanout=3",
            "stop.virtual_time_s=100000",
            "eval.every_s=100000",  # one evaluation at the start, none in the window
            f"deploy.base_port={base_port}",
            f"deploy.rcvhwm={RCVHWM}",
        ],
    )


def _frames(rt, sender_ids: list[int]) -> dict[int, list[bytes]]:
    """Valid fragment frames from each sender id to node 0: one per fragment of the run."""
    import torch

    from peerlearn.codecs.fragment import FragmentPayload
    from peerlearn.codecs.message import Message
    from peerlearn.deploy.wire import encode_message

    out = {}
    gen = torch.Generator().manual_seed(0)
    for src in sender_ids:
        frames = []
        for k, idx in enumerate(rt.proto.fragments):
            values = rt.model[idx] + 0.01 * torch.randn(len(idx), generator=gen)
            frames.append(
                encode_message(Message(src, rt.node, "fragment", 1, FragmentPayload(k, values)))
            )
        out[src] = frames
    return out


def _split(frames: dict[int, list[bytes]], n_senders: int) -> list[dict[int, list[bytes]]]:
    ids = sorted(frames)
    return [{i: frames[i] for i in ids[s::n_senders]} for s in range(n_senders)]


def _free_port_base(n: int) -> int:
    """A base port whose next n ports can be bound now, below Linux's ephemeral range (32768+)
    so that no outgoing connection takes one meanwhile. SO_REUSEADDR as ZeroMQ's own bind:
    connections of earlier runs in TIME_WAIT do not block it."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


def measure_node(
    hidden: list[int],
    n_senders: int,
    ids_per_sender: int,
    fragments: int,
    warmup_s: float,
    secs: float,
) -> tuple[dict, dict[int, list[bytes]]]:
    """The real node under fire; returns its row and the frames (reused by the baseline).

    The window is timed from a thread, not from the event loop, so that a receive loop that
    starved the event loop (as it did before it yielded after each frame) could not hide it.
    """
    import asyncio
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import zmq.asyncio

    from peerlearn.deploy.node import NodeRuntime
    from peerlearn.deploy.process import endpoints
    from peerlearn.experiment import build_setup

    n_nodes = max(16, 1 + n_senders * ids_per_sender)
    cfg = _config(hidden, fragments, n_nodes, _free_port_base(n_nodes))
    setup = build_setup(cfg)
    tmp = tempfile.TemporaryDirectory(prefix="node-receive-")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")

    async def scenario() -> tuple[dict, dict[int, list[bytes]]]:
        ctx = zmq.asyncio.Context()
        rt = NodeRuntime(
            setup,
            0,
            ctx=ctx,
            endpoints=endpoints(cfg, None),
            bind="127.0.0.1",
            start_at=time.time(),
            out_dir=Path(tmp.name),
            executor=executor,
        )
        senders = None
        run = None
        loop = asyncio.get_running_loop()

        def snap() -> tuple:
            s = rt.stats
            copies = [r[4] for r in rt.rows[:] if r[3] == "copies_used"]
            return (
                time.perf_counter(),
                time.process_time(),
                s.messages_received,
                s.bytes_received,
                rt.proto.iteration,
                len(copies),
                sum(copies),
            )

        def window() -> tuple[tuple, tuple]:
            """In a thread: warm-up, the window, then stop the senders (the loop may be busy)."""
            try:
                time.sleep(warmup_s)
                a = snap()
                time.sleep(secs)
                b = snap()
            finally:
                senders.close()
            return a, b

        try:
            rt.warm_up()
            rt.open_sockets()
            frames = _frames(rt, list(range(1, 1 + n_senders * ids_per_sender)))
            senders = Senders(rt.endpoints[0], _split(frames, n_senders))
            # sender start-up (spawn) does not count: the node starts with the blast
            await loop.run_in_executor(None, senders.start)
            rt.start_at = time.time()
            run = asyncio.create_task(rt.run())
            a, b = await loop.run_in_executor(None, window)
            if run.done():
                raise RuntimeError(f"the node stopped early: {rt.stop_reason}")
            wall = b[0] - a[0]
            aggs = b[5] - a[5]
            row = {
                "hidden": hidden,
                "numel": rt.numel,
                "fragment_bytes": sum(len(f) for f in frames[1]) / len(frames[1]),
                "senders": n_senders,
                "sender_ids": n_senders * ids_per_sender,
                "window_s": wall,
                "node_msgs_per_s": (b[2] - a[2]) / wall,
                "node_MB_per_s": (b[3] - a[3]) / wall / 1e6,
                "node_cpu": (b[1] - a[1]) / wall,
                "iterations": b[4] - a[4],
                "iterations_total": rt.proto.iteration,
                "aggregations_per_s": aggs / wall,
                "copies_per_aggregation": (b[6] - a[6]) / aggs if aggs else 0.0,
                "sends_per_iteration": rt.proto.fanout * rt.proto.n_fragments,
            }
            return row, frames
        finally:
            if senders is not None:
                senders.close()
            if run is not None:
                rt.stop("benchmark")
                await asyncio.gather(run, return_exceptions=True)
            else:
                rt.close_sockets()
            ctx.destroy(linger=0)
            rejected.update(rt.rejected)

    rejected: dict[str, int] = {}
    try:
        row, frames = asyncio.run(scenario())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        tmp.cleanup()
    # counted over the whole run, the frames drained after the window included
    row["rejected"] = sum(rejected.values())
    row["rejected_reasons"] = rejected
    return row, frames


def measure_raw(frames: dict[int, list[bytes]], n_senders: int, warmup_s: float, secs) -> dict:
    """The same frames into a ROUTER that only receives them: the socket's own rate."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    senders = None
    try:
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, RCVHWM)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        senders = Senders(f"tcp://127.0.0.1:{port}", _split(frames, n_senders))
        senders.start()
        count = nbytes = 0
        t_end_warm = time.perf_counter() + warmup_s
        started = None
        while True:
            if router.poll(1000) == 0:
                raise RuntimeError("the plain ROUTER received nothing for 1 s")
            parts = router.recv_multipart(copy=False)
            now = time.perf_counter()
            if started is None:
                if now < t_end_warm:
                    continue
                started, cpu0 = now, time.process_time()
            count += 1
            nbytes += len(parts[1])
            if now - started >= secs:
                break
        wall = time.perf_counter() - started
        return {
            "raw_msgs_per_s": count / wall,
            "raw_MB_per_s": nbytes / wall / 1e6,
            "raw_cpu": (time.process_time() - cpu0) / wall,
        }
    finally:
        if senders is not None:
            senders.close()
        router.close(linger=0)
        ctx.term()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", nargs="+", default=["64", "256,128", "1024,1024"])
    p.add_argument("--senders", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ids-per-sender", type=int, default=4, help="peer identities per process")
    p.add_argument("--fragments", type=int, default=10, help="DivShare's Ω")
    p.add_argument("--seconds", type=float, default=8.0, help="measured window")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    p.add_argument("--no-raw", action="store_true", help="skip the plain-ROUTER baseline")
    p.add_argument("--quick", action="store_true", help="CI-sized: one tiny case, 0.7 s")
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args()
    if args.quick:
        args.hidden, args.senders, args.ids_per_sender = ["16"], [1], 2
        args.seconds, args.warmup = 0.7, 0.3
    import torch

    torch.set_num_threads(1)
    rows = []
    for h in args.hidden:
        hidden = [int(x) for x in h.split(",")]
        for s in args.senders:
            row, frames = measure_node(
                hidden, s, args.ids_per_sender, args.fragments, args.warmup, args.seconds
            )
            if not args.no_raw:
                row.update(measure_raw(frames, s, args.warmup, args.seconds))
                row["node_over_raw"] = row["node_msgs_per_s"] / row["raw_msgs_per_s"]
            rows.append(row)
            _print_row(row, header=len(rows) == 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if any(r["rejected"] for r in rows):
        raise SystemExit(f"frames were rejected: {[r['rejected_reasons'] for r in rows]}")


def _print_row(r: dict, *, header: bool) -> None:
    if header:
        print(
            f"{'hidden':>10} {'frag KB':>8} {'S':>2} {'raw msg/s':>10}"
            f" {'raw MB/s':>9} {'node msg/s':>10} {'node MB/s':>9} {'node/raw':>8} {'rej':>4}"
            f" {'iters':>6} {'copies/agg':>10} {'node cpu':>8}"
        )
    hidden = ",".join(map(str, r["hidden"]))
    raw = (
        f"{r['raw_msgs_per_s']:>10.0f} {r['raw_MB_per_s']:>9.1f}"
        if "raw_msgs_per_s" in r
        else f"{'-':>10} {'-':>9}"
    )
    ratio = f"{r['node_over_raw']:>8.0%}" if "node_over_raw" in r else f"{'-':>8}"
    print(
        f"{hidden:>10} {r['fragment_bytes'] / 1e3:>8.1f} {r['senders']:>2} {raw}"
        f" {r['node_msgs_per_s']:>10.0f} {r['node_MB_per_s']:>9.1f} {ratio} {r['rejected']:>4}"
        f" {r['iterations']:>6} {r['copies_per_aggregation']:>10.1f} {r['node_cpu']:>8.0%}",
        flush=True,
    )


if __name__ == "__main__":
    main()
