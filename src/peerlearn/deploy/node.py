"""The real-time runtime of one node: the same protocol object the simulator drives, on sockets.

Transport as in the DivShare artifact: each node binds one ZeroMQ ROUTER (everything it
receives) and holds one DEALER per peer it sends to, whose identity is its own id. Unlike the
artifact, the backlog lives in this process, not in ZeroMQ: each peer has its own FIFO of encoded
frames here, and a sender task hands the head to a DEALER whose high-water mark is 1 only when
the socket can take it. So
``DropPending`` really removes everything that has not left the process yet, and the bytes
counted as sent are frames handed to ZeroMQ.

Local training runs in a worker thread (one per process, which also evaluates: torch's functional
transforms are not meant to be entered from several threads at once), so receiving and sending go
on while a node trains; asynchronous algorithms depend on that. Every protocol call happens on the
event loop, so the protocol never sees concurrency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import traceback
from collections import Counter, deque
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import zmq
import zmq.asyncio

from peerlearn.codecs.floats import FPZIP, RAW, FloatCodec, float_codec
from peerlearn.codecs.message import Message
from peerlearn.components import ALGORITHMS
from peerlearn.compute.cost_model import training_time
from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.deploy.decoder import DecoderProcess, SandboxedFpzip
from peerlearn.deploy.errors import DeployError
from peerlearn.deploy.transport import DEALER_SNDHWM
from peerlearn.deploy.wire import (
    WireError,
    WireLimits,
    decode_message,
    default_max_bytes,
    encode_message,
)
from peerlearn.experiment import Setup
from peerlearn.network.schedule import node_offline_spans
from peerlearn.protocols.base import (
    DropPending,
    Event,
    Finish,
    MessageArrived,
    Record,
    Send,
    SetTimer,
    Started,
    TimerFired,
    Train,
    TrainingDone,
)
from peerlearn.results.atomic import write_atomic

log = logging.getLogger("peerlearn.deploy")

#: metric rows kept in memory before they are appended to the node's CSV (a node that does not
#: evaluate would otherwise keep every row of the run)
ROWS_IN_MEMORY = 4096


def identity_of(node: int) -> bytes:
    """The ZeroMQ routing identity of a node's DEALERs: its id in ASCII decimal."""
    return str(node).encode()


def node_of_identity(identity: bytes, n_nodes: int) -> int | None:
    """The node an identity names, or None (ZeroMQ's generated identities start with a 0 byte)."""
    if not identity.isdigit() or len(identity) > 9:
        return None
    node = int(identity)
    return node if node < n_nodes else None


def run_float_codec(algorithm) -> FloatCodec:
    """The float codec of this run's partial payloads (as its protocol resolves it), RAW where
    the algorithm sends none; a receiver accepts no other."""
    choice = getattr(algorithm, "float_codec", None)
    if choice is None or getattr(algorithm, "compress", True) is False:  # CHOCO uncompressed
        return RAW
    return float_codec(choice)


@dataclass
class Keys:
    """CURVE material of one node: its own pair, every node's public key (z85)."""

    public: bytes
    secret: bytes
    peers: dict[int, bytes]


@dataclass(slots=True)
class _Outgoing:
    iteration: int
    frame: bytes
    data: int
    meta: int
    kind: str
    sent_s: float  # when the protocol emitted the Send (seconds since the common start)
    ready_at: float = 0.0  # monotonic; > now while an emulated latency holds it back


@dataclass
class NodeStats:
    """What one node measured; written as node-<id>.json and merged by the launcher."""

    node: int
    iterations: int = 0
    finished: bool = False
    stop_reason: str = ""
    start_lateness_s: float = 0.0
    end_s: float = 0.0
    train_wall_s: float = 0.0
    eval_wall_s: float = 0.0
    train_jobs: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    data_bytes: int = 0
    meta_bytes: int = 0
    messages_dropped: int = 0
    bytes_dropped: int = 0
    messages_overflow: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    received_from: dict[int, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    # [churn] (docs/dynamics.md): messages this node lost to churn (its own sends dropped while it
    # or the peer was offline, frames that arrived while it was offline) and the bytes of those
    # that had crossed a link; how often it left or rejoined
    messages_lost_churn: int = 0
    bytes_lost_churn: int = 0
    churn_transitions: int = 0


class NodeRuntime:
    """One node: protocol + sockets + clocks. ``run`` returns when the node stops."""

    def __init__(
        self,
        setup: Setup,
        node: int,
        *,
        ctx: zmq.asyncio.Context,
        endpoints: dict[int, str],
        bind: str,
        start_at: float,
        out_dir: Path,
        executor: Executor,
        keys: Keys | None = None,
        public_to_node: dict[str, int] | None = None,
        decoder: DecoderProcess | None = None,
    ) -> None:
        """``decoder``: the fpzip decoder child to share with the process's other nodes (they
        share its event loop, so calls never overlap); a node of an fpzip run without one
        starts its own and stops it when it ends."""
        cfg = setup.cfg
        self.setup, self.cfg, self.node, self.n = setup, cfg, node, cfg.nodes
        self.zctx, self.endpoints, self.bind = ctx, endpoints, bind
        self.start_at = start_at
        self.out_dir = out_dir
        self.executor = executor
        self.keys = keys
        self.public_to_node = public_to_node or {}
        spec = setup.model
        ds = setup.dataset
        self.model = spec.init_vector().clone()
        self.numel = spec.layout.numel
        self.trainer = BatchedTrainer(spec, ds.train_x, ds.train_y, lr=cfg.train.lr)
        self.evaluates = node in set(int(i) for i in setup.eval_nodes)
        self.evaluator = (
            BatchedEvaluator(spec, ds.test_x, ds.test_y, batch_size=cfg.eval.batch_size)
            if self.evaluates
            else None
        )
        self.stream = setup.stream(node)
        self.proto = setup.protocol(node, self.model)  # the simulator's seeds, see Setup
        d = cfg.deploy
        codec = run_float_codec(cfg.algorithm)
        algorithm = ALGORITHMS.get(cfg.algorithm.name)
        # received fpzip blobs are decoded in a child process: fpzip's C decoder can crash
        self.decoder = (decoder or DecoderProcess()) if codec is FPZIP else None
        self.owns_decoder = self.decoder is not None and decoder is None
        self.limits = WireLimits(
            node=node,
            n_nodes=self.n,
            numel=self.numel,
            allowed=algorithm.payload_classes(),
            kinds=frozenset(algorithm.kinds),
            max_bytes=d.max_message_bytes or default_max_bytes(self.numel),
            float_codec=SandboxedFpzip(self.decoder) if self.decoder else codec,
        )
        duration = cfg.stop.virtual_time_s if cfg.stop.virtual_time_s else d.timeout_s
        self.duration = float(duration)
        self.stats = NodeStats(node)
        self.rejected: Counter[str] = Counter()
        self.received_from: Counter[int] = Counter()
        self.rows: list[tuple[float, int, int, str, float]] = []
        self.queues: dict[int, deque[_Outgoing]] = {}
        # --emulate without netem: how long each frame waits before it may leave, per peer
        self.hold_s: list[float] | None = None
        if self.cfg.deploy.emulate and self.cfg.deploy.emulate_latency == "transport":
            from peerlearn.deploy.emulate import network_spec

            self.hold_s = network_spec(self.cfg).latency_s[node].tolist()
        self.wake: dict[int, asyncio.Event] = {}
        self.dealers: dict[int, zmq.asyncio.Socket] = {}
        self.router: zmq.asyncio.Socket | None = None
        self.training = False
        self.finished_at: float | None = None
        self.last_progress = 0.0
        self.stop_event = asyncio.Event()
        self.stop_reason = ""
        self.timers: list[asyncio.TimerHandle] = []
        self.tasks: set[asyncio.Task] = set()
        self.csv_path = out_dir / f"node-{node}.csv"
        # eval.log_messages: frames handed to ZeroMQ and frames received, each numbered per
        # peer, paired by the launcher into messages.csv (results/messages.match_deployed)
        self.log_messages = cfg.eval.log_messages
        self.sent_log: list[tuple[int, int, str, int, int, float]] = []
        self.recv_log: list[tuple[int, int, int, int, float]] = []
        self.sent_seq: Counter[int] = Counter()
        self.recv_seq: Counter[int] = Counter()
        # [churn]: every node's offline spans, from the same seed and trace as the simulator's
        self.offline_spans = node_offline_spans(setup)
        self.offline = False
        self.frozen: list[Event] = []  # events of an offline node, fed when it rejoins

    # -- clocks ----------------------------------------------------------------------------------

    def now(self) -> float:
        """Wall seconds since the common start (time.time is what all hosts agree on via NTP)."""
        return time.time() - self.start_at

    def record(self, metric: str, value: float) -> None:
        self.rows.append((self.now(), self.node, self.proto.iteration, metric, float(value)))
        if len(self.rows) >= ROWS_IN_MEMORY:  # e.g. a flood of ignored messages, each recorded
            self._flush_rows()

    # -- sockets ---------------------------------------------------------------------------------

    def open_sockets(self) -> None:
        """Bind the ROUTER (DEALERs are made on the first send to each peer)."""
        router = self.zctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, self.cfg.deploy.rcvhwm)
        # ZeroMQ cuts a connection sending frames far above the limit before buffering them;
        # frames just above it reach the checks below and are counted
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_bytes)
        if self.keys is not None:
            router.curve_server = True
            router.curve_publickey = self.keys.public
            router.curve_secretkey = self.keys.secret
        port = self.endpoints[self.node].rsplit(":", 1)[1]
        address = f"tcp://{self.bind}:{port}"
        try:
            router.bind(address)
        except zmq.ZMQError as exc:
            router.close(linger=0)
            raise DeployError(f"node {self.node} cannot listen on {address}: {exc}") from None
        self.router = router

    def _connect(self, peer: int) -> None:
        """A DEALER to ``peer``, made on the first send to it (a D-PSGD node on a sparse graph
        needs only its neighbours'); the peer may not be up yet, ZeroMQ connects when it is."""
        sock = self.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity_of(self.node))
        # the backlog stays in our queue, where it can be dropped
        sock.setsockopt(zmq.SNDHWM, DEALER_SNDHWM)
        sock.setsockopt(zmq.LINGER, 0)
        if self.cfg.deploy.sndbuf_bytes:
            sock.setsockopt(zmq.SNDBUF, self.cfg.deploy.sndbuf_bytes)
        if self.keys is not None:
            sock.curve_serverkey = self.keys.peers[peer]
            sock.curve_publickey = self.keys.public
            sock.curve_secretkey = self.keys.secret
        sock.connect(self.endpoints[peer])
        self.dealers[peer] = sock
        self.queues[peer] = deque()
        self.wake[peer] = asyncio.Event()
        self._spawn(self._sender(peer))

    def warm_up(self) -> None:
        """One throw-away training step and evaluation before the start: the first call of the
        vmapped functions is slow (seconds), and would otherwise delay only the first iteration.
        """
        if self.decoder is not None:
            self.decoder.start()  # its imports overlap the warm-up, not the first message
        part = np.asarray(self.setup.partition.train[self.node])
        batch = torch.as_tensor(part[: self.cfg.train.batch_size], dtype=torch.int64)
        self.trainer.run([TrainJob(start=self.model.clone(), batches=batch.unsqueeze(0))])
        if self.evaluator is not None:
            local = self.setup.partition.test
            self.evaluator.evaluate(
                self.model.clone().unsqueeze(0),
                test_indices=[local[self.node][:4]] if local is not None else None,
                subset=np.arange(min(4, len(self.setup.dataset.test_y))),
            )

    def close_sockets(self) -> None:
        for sock in self.dealers.values():
            sock.close(linger=0)
        if self.router is not None:
            self.router.close(linger=0)
        if self.decoder is not None and self.owns_decoder:
            self.decoder.close()

    # -- main ------------------------------------------------------------------------------------

    async def run(self) -> NodeStats:
        loop = asyncio.get_running_loop()
        self.stats.start_lateness_s = max(0.0, self.now())
        self._spawn(self._receiver())
        self._spawn(self._watchdog())
        if self.evaluates:
            self._schedule_eval(loop)
        self.last_progress = self.now()
        log.info("node %d: started %.3f s after the common start", self.node, self.now())
        if self.offline_spans is not None:
            self.offline = self.peer_offline(self.node, self.now())
            self._spawn(self._churn())
        self._feed(Started())
        await self.stop_event.wait()
        log.info("node %d: stopping (%s) at %.3f s", self.node, self.stop_reason, self.now())
        for task in self.tasks:
            task.cancel()
        for handle in self.timers:
            handle.cancel()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if self.evaluates:
            await self._evaluate(self.model.clone(), self.now(), self.proto.iteration)
        self.record("stop_" + self.stop_reason, 1.0)
        self._write_results()
        self.close_sockets()
        return self.stats

    def _spawn(self, coro) -> None:
        """Run a task; one that fails stops the node (reason "error") instead of hanging it."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("node %d: %s", self.node, "".join(traceback.format_exception(exc)))
            self.stop("error")

    def stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    async def _watchdog(self) -> None:
        """Deadline, linger after Finish, stalls (peers gone) and an orphaned process."""
        stall = self.cfg.deploy.stall_timeout_s
        linger = self.cfg.deploy.linger_s
        while True:
            await asyncio.sleep(0.1)
            t = self.now()
            if t >= self.duration:
                self.stop("deadline")
            elif self.finished_at is not None:
                drained = not any(self.queues.values())
                if drained or t - self.finished_at >= linger:
                    self.stop("finished")
            elif not self.training and not self.offline and t - self.last_progress > stall:
                self.stop("stalled")

    # -- protocol events and actions ------------------------------------------------------------

    def _feed(self, event: Event) -> None:
        if self.proto.finished or self.stop_event.is_set():
            return
        if self.offline:  # frozen: its own events wait for the rejoin
            self.frozen.append(event)
            return
        for action in self.proto.handle(event):
            self._act(action)

    def _act(self, action) -> None:
        match action:
            case Train(steps=steps):
                if self.training:
                    raise RuntimeError(f"node {self.node} asked to train while training")
                self.training = True
                self._spawn(self._train(steps))
            case Send(dest=dest, kind=kind, iteration=iteration, payload=payload):
                if dest == self.node or not 0 <= dest < self.n:
                    raise ValueError(f"node {self.node} sends to invalid destination {dest}")
                if self.offline_spans is not None and self.peer_offline(dest, self.now()):
                    self.stats.messages_lost_churn += 1  # a refused connection: nothing sent
                    return
                if dest not in self.queues:
                    self._connect(dest)
                msg = Message(self.node, dest, kind, iteration, payload)
                frame = encode_message(msg)  # encoded now: the payload is a snapshot
                q = self.queues[dest]
                if len(q) >= self.cfg.deploy.max_queue:
                    q.popleft()
                    self.stats.messages_overflow += 1
                ready = time.monotonic() + self.hold_s[dest] if self.hold_s is not None else 0.0
                q.append(
                    _Outgoing(
                        iteration, frame, msg.data_bytes, msg.meta_bytes, kind, self.now(), ready
                    )
                )
                self.wake[dest].set()
            case DropPending(before_iteration=before):
                for q in self.queues.values():
                    keep = [m for m in q if before is not None and m.iteration >= before]
                    for m in q:
                        if before is None or m.iteration < before:
                            self.stats.messages_dropped += 1
                            self.stats.bytes_dropped += len(m.frame)
                    q.clear()
                    q.extend(keep)
            case SetTimer(delay_s=delay, tag=tag):
                loop = asyncio.get_running_loop()
                self.timers.append(loop.call_later(delay, self._timer, tag))
            case Record(metric=metric, value=value):
                self.record(metric, value)
            case Finish():
                self.record("finished", 1.0)
                self.finished_at = self.now()
                self.stats.finished = True
            case _:
                raise TypeError(f"unknown action {action!r}")

    def _timer(self, tag: str) -> None:
        try:
            self._feed(TimerFired(tag))
        except Exception:
            log.exception("node %d: timer %r", self.node, tag)
            self.stop("error")

    async def _train(self, steps: int) -> None:
        """k steps on the node's own minibatch stream (the simulator's seeds), off the loop."""
        batches = self.stream.take(steps)
        job = TrainJob(start=self.model.clone(), batches=batches)
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        result, loss, computing = await loop.run_in_executor(self.executor, self._run_job, job)
        spent = time.perf_counter() - t0  # also waiting for the process's one torch thread
        self.stats.train_wall_s += computing
        self.stats.train_jobs += 1
        if self.cfg.deploy.emulate_compute:
            target = training_time(
                self.cfg.compute.step_time_s, self.setup.compute_factors[self.node], steps
            )
            if target > spent:
                await asyncio.sleep(target - spent)
        self.training = False
        if self.stop_event.is_set():
            return
        self.model.copy_(result)
        self.last_progress = self.now()
        if not math.isnan(loss):
            self.record("train_loss", loss)
        self._feed(TrainingDone(steps))

    def _run_job(self, job: TrainJob) -> tuple[torch.Tensor, float, float]:
        """In the torch thread: the new model, its loss, and the seconds it took (not counting
        the wait for the thread, which the nodes of one process share)."""
        t0 = time.perf_counter()
        out = self.trainer.run([job])
        assert self.trainer.last_loss is not None
        return out[0], float(self.trainer.last_loss[0]), time.perf_counter() - t0

    # -- network ---------------------------------------------------------------------------------

    async def _sender(self, peer: int) -> None:
        """Hand the head of this peer's queue to ZeroMQ only when the socket can take it."""
        sock, q, wake = self.dealers[peer], self.queues[peer], self.wake[peer]
        while True:
            if not q:
                wake.clear()
                await wake.wait()
                continue
            wait = q[0].ready_at - time.monotonic()
            if wait > 0:  # emulated latency (deploy.emulate_latency = "transport")
                await asyncio.sleep(wait)
                continue  # the head may have been dropped meanwhile
            await sock.poll(None, zmq.POLLOUT)
            if not q:  # dropped while waiting
                continue
            if self.offline_spans is not None and self.peer_offline(peer, self.now()):
                q.popleft()  # the peer left after this was queued: lost, as in the simulator
                self.stats.messages_lost_churn += 1
                continue
            item = q.popleft()
            await sock.send(item.frame, copy=False)
            s = self.stats
            s.messages_sent += 1
            s.bytes_sent += len(item.frame)
            s.data_bytes += item.data
            s.meta_bytes += item.meta
            if self.log_messages:
                seq = self.sent_seq[peer]
                self.sent_seq[peer] += 1
                self.sent_log.append(
                    (peer, seq, item.kind, item.iteration, len(item.frame), item.sent_s)
                )

    async def _receiver(self) -> None:
        assert self.router is not None
        while True:
            frames = await self.router.recv_multipart(copy=False)
            self.handle_frames(frames)
            # while frames are waiting, pyzmq hands back an already finished future, and awaiting
            # it does not return to the event loop: without this, a steady stream of messages
            # would starve the end of training, timers, evaluations and the watchdog
            await asyncio.sleep(0)

    def handle_frames(self, frames: list) -> None:
        """Check one incoming message; anything wrong is counted by reason and dropped."""
        size = sum(len(f.bytes) for f in frames[1:])
        if self.offline:  # an offline node receives nothing
            self.stats.messages_lost_churn += 1
            self.stats.bytes_lost_churn += size
            return
        try:
            if len(frames) != 2:
                raise WireError("malformed", f"{len(frames)} frames")
            identity = node_of_identity(frames[0].bytes, self.n)
            if identity is None:
                raise WireError("unknown_identity", repr(frames[0].bytes[:16]))
            if self.log_messages:  # counted before the checks, as the sender counted every frame
                self.recv_seq[identity] += 1
            if self.keys is not None:
                user = frames[1].get("User-Id")
                if self.public_to_node.get(user) != identity:
                    raise WireError("spoofed_sender", f"key of {user!r} used as node {identity}")
            msg = decode_message(frames[1].bytes, self.limits, identity=identity)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            return
        except Exception:  # a check that itself failed: a bug, but never a reason to stop
            log.exception("node %d: checking a frame failed", self.node)
            self.rejected["check_failed"] += 1
            return
        self.stats.messages_received += 1
        self.stats.bytes_received += size
        self.received_from[msg.src] += size
        if self.log_messages:
            seq = self.recv_seq[msg.src] - 1  # msg.src is the identity: checked by decode
            self.recv_log.append((msg.src, seq, msg.iteration, size, self.now()))
        try:
            self._feed(MessageArrived(msg))
        except Exception:  # the protocol refused it (e.g. a fragment of the wrong length)
            self.rejected["protocol"] += 1

    # -- churn ---------------------------------------------------------------------------------

    def peer_offline(self, node: int, t: float) -> bool:
        """Whether ``node`` is offline at ``t`` (seconds since the common start)."""
        assert self.offline_spans is not None
        return any(a <= t < b for a, b in self.offline_spans[node])

    async def _churn(self) -> None:
        """Leave and rejoin on this node's spans: a leave drops its queued sends; a rejoin feeds
        the events that came while it was away (its training goes on from its own model)."""
        assert self.offline_spans is not None
        for leave, rejoin in self.offline_spans[self.node]:
            await asyncio.sleep(max(0.0, leave - self.now()))
            self.stats.churn_transitions += 1  # also a leave at the start, as in the simulator
            self.record("offline", 1.0)
            self.offline = True
            for q in self.queues.values():
                self.stats.messages_lost_churn += len(q)
                q.clear()
            if rejoin == float("inf"):
                return
            await asyncio.sleep(max(0.0, rejoin - self.now()))
            self.offline = False
            self.stats.churn_transitions += 1
            self.record("offline", 0.0)
            self.last_progress = self.now()
            frozen, self.frozen = self.frozen, []
            for event in frozen:
                self._feed(event)

    # -- evaluation and results ------------------------------------------------------------------

    def _schedule_eval(self, loop: asyncio.AbstractEventLoop, k: int = 0) -> None:
        """Evaluate at 0, every_s, 2 every_s, ... after the common start, on a model snapshot."""
        t = k * self.cfg.eval.every_s
        if t >= self.duration:
            return

        def tick() -> None:
            if self.stop_event.is_set():
                return
            snap, when = self.model.clone(), self.now()
            self._spawn(self._evaluate(snap, when, self.proto.iteration))
            self._schedule_eval(loop, k + 1)

        self.timers.append(loop.call_later(max(0.0, t - self.now()), tick))

    async def _evaluate(self, snapshot: torch.Tensor, when: float, it: int) -> None:
        evaluator = self.evaluator
        assert evaluator is not None

        def run() -> tuple[dict, float]:  # timed in the torch thread, as training is
            t0 = time.perf_counter()
            out = evaluator.evaluate(
                snapshot.unsqueeze(0),
                test_indices=self.setup.test_sets([self.node]),
                subset=self.setup.eval_subset,
            )
            return out, time.perf_counter() - t0

        out, computing = await asyncio.get_running_loop().run_in_executor(self.executor, run)
        self.stats.eval_wall_s += computing
        for metric, values in out.items():
            self.rows.append((when, self.node, it, f"test_{metric}", float(values[0])))
        s = self.stats
        self.rows.append((when, self.node, it, "bytes_sent", float(s.bytes_sent)))
        self.rows.append((when, self.node, it, "bytes_dropped", float(s.bytes_dropped)))
        self._flush_rows()

    def _flush_rows(self) -> None:
        """Append rows to the node's CSV now, so a node killed later still leaves its curve."""
        if not self.rows:
            return
        new = not self.csv_path.exists()
        with self.csv_path.open("a") as f:
            if new:
                f.write("time_s,node,iteration,metric,value\n")
            for t, n, it, m, v in self.rows:
                f.write(f"{t!r},{n},{it},{m},{v!r}\n")
        self.rows.clear()

    def _write_results(self) -> None:
        s = self.stats
        s.iterations = self.proto.iteration
        s.stop_reason = self.stop_reason
        s.end_s = self.now()
        s.received_from = dict(self.received_from)
        s.rejected = dict(self.rejected)
        self._flush_rows()
        if self.log_messages:
            log = json.dumps({"sent": self.sent_log, "received": self.recv_log})
            write_atomic(self.out_dir / f"messages-{self.node}.json", log)
        results = json.dumps(asdict(s), indent=1) + "\n"
        write_atomic(self.out_dir / f"node-{self.node}.json", results)
