"""The virtual-time engine: drives one protocol object per node over a modelled network.

Time is virtual (float64 seconds). The engine owns every node's model as one row of a
(nodes x parameters) tensor, the network model (``FlowNetwork``) and the compute model, and turns
protocol actions into future events. Local training is lazy: ``Train`` snapshots the node's vector
and schedules the finish; the arithmetic runs when the first pending finish is delivered, for all
pending jobs together in one batched call. Each job starts from its own snapshot, so the result is
the same as running the jobs one by one.

The loop interleaves two sources of time: the event queue, and the network's next transmission
completion (which moves whenever rates are recomputed, so it is asked for, not queued).

Between two events the loop may hand the simulator to a checkpoint hook; ``state_dict()`` /
``load_state_dict()`` save and restore everything a run depends on (docs/checkpoint.md).
"""

from __future__ import annotations

import gc
import math
import random
import time as wallclock
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as Protocol_

import numpy as np
import torch

from peerlearn.codecs.message import Message
from peerlearn.compute.cost_model import training_time
from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.precision import use_tf32
from peerlearn.compute.threads import apply_threads
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.experiment import Setup
from peerlearn.protocols.base import (
    DropPending,
    Finish,
    Protocol,
    Record,
    Send,
    SetTimer,
    Started,
    TimerFired,
    Train,
    TrainingDone,
)
from peerlearn.results.metrics import ALL_NODES, MetricsRecorder
from peerlearn.results.outcome import ByteCounters, RunResult
from peerlearn.sim.dynamics import SimDynamics, build_schedule
from peerlearn.sim.events import EventQueue
from peerlearn.sim.network import flow_network
from peerlearn.sim.send_buffer import send_buffer_of
from peerlearn.sim.spill import PayloadSpill, PendingMessages, SpilledPayload

# event kinds in the queue (_DYN: the next capacity or availability change, sim/dynamics.py)
_NODE, _DELIVER, _EVAL, _DYN = 0, 1, 2, 3
#: allocations between first-generation collections during the loop (CPython's default is 700)
_GC_GEN0_THRESHOLD = 50_000


@dataclass
class _Job:
    job: TrainJob
    result: torch.Tensor | None = None
    loss: float | None = None


ProgressFn = Callable[[float, float | None], None]


class CheckpointHook(Protocol_):
    """Asked at every consistent point of the loop (between events) whether to save the state."""

    def due(self, t_next: float) -> bool:
        """Whether to save now, before the next event (at virtual time ``t_next``) happens."""

    def save(self, sim: Simulator) -> None:
        """Save ``sim.state_dict()``; it must not change the simulator."""


class Simulator:
    def __init__(
        self,
        setup: Setup,
        recorder: MetricsRecorder | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        cfg = setup.cfg  # read here only: the event handlers use the values taken below
        self.setup = setup
        self.n = cfg.nodes
        self.eval_every_s = cfg.eval.every_s
        self.step_time_s = cfg.compute.step_time_s
        self.batched = cfg.compute.batched
        self.recorder = recorder or MetricsRecorder()
        self.progress = progress
        torch_device = cfg.compute.device
        if torch_device == "cuda":
            use_tf32(cfg.compute.tf32)
        spec = setup.model
        ds = setup.dataset
        # intra-op threads for this run's size (compute/threads.py); before any torch work
        self.threads = apply_threads(
            cfg.compute.threads, spec, ds.train_x[:1], cfg.train.batch_size, torch_device
        )
        init = spec.init_vector()
        self.models = init.unsqueeze(0).repeat(self.n, 1).contiguous()
        self.trainer = BatchedTrainer(
            spec, ds.train_x, ds.train_y, lr=cfg.train.lr, device=torch_device
        )
        self.evaluator = BatchedEvaluator(
            spec, ds.test_x, ds.test_y, batch_size=cfg.eval.batch_size, device=torch_device
        )
        self.streams = [setup.stream(i) for i in range(self.n)]
        self.net = flow_network(
            setup.network, cfg.network.rate_update_s, send_buffer_of(cfg.network, cfg.deploy)
        )
        self.queue = EventQueue()
        self.now = 0.0
        self.stop_time = cfg.stop.virtual_time_s if cfg.stop.virtual_time_s else math.inf
        self.protocols: list[Protocol] = [setup.protocol(i, self.models[i]) for i in range(self.n)]
        self.jobs: dict[int, _Job] = {}
        # pending message id -> (message, (nbytes, data bytes, meta bytes)), sized once per payload;
        # beyond compute.spill_after_mb of them, new payloads wait in a file (sim/spill.py)
        self.messages = PendingMessages()
        self.spill = PayloadSpill(cfg.compute.spill_after_mb * 1e6)
        self._next_msg_id = 0
        self.counters = ByteCounters(self.n)
        # Delivered bytes per node (delivered, data, meta, received) as Python ints, added to
        # ``counters`` before anything reads them: integer sums, so the totals are exact either way.
        self._delivered_bytes = [[0] * self.n for _ in range(4)]
        self.finished = 0  # nodes that emitted Finish
        self.messages_delivered = 0
        self.messages_dropped = 0
        self.message_log: list | None = [] if cfg.eval.log_messages else None
        self.train_batches = 0
        self.train_jobs = 0
        self.train_wall = 0.0
        self.eval_wall = 0.0
        self.last_eval_time = -math.inf
        self.last_mean_acc: float | None = None
        self.started = False  # the start events are queued (False until run, or a resumed state)
        self.wall_before = 0.0  # wall seconds spent by earlier processes (a resumed run)
        self._wall_start = wallclock.perf_counter()
        #: the virtual time of the next event when the last checkpoint was taken (or loaded)
        self.checkpoint_at: float | None = None
        self._checkpoint: CheckpointHook | None = None
        # eval.every_iterations: evaluate when every node has reached the next multiple
        self.round_every: int | None = cfg.eval.every_iterations
        self.round_target = self.round_every or 0
        self.round_reached: set[int] = set()
        # capacity traces and churn (docs/dynamics.md); None when both are off
        schedule = build_schedule(setup)
        self.dynamics = SimDynamics(setup, schedule) if schedule is not None else None
        self.compute_factors = setup.compute_factors
        if self.dynamics is not None:
            self.dynamics.apply_initial(self)
            self.compute_factors = self.dynamics.factors  # changed in place by the trace

    # -----------------------------------------------------------------------------------------
    def run(self, checkpoint: CheckpointHook | None = None) -> RunResult:
        """Run to the end; from where a loaded state stopped, if ``load_state_dict`` was called.

        ``checkpoint`` is asked between events whether to save the state, and saves it.
        """
        t0 = self._wall_start = wallclock.perf_counter()
        self._checkpoint = checkpoint
        if not self.started:
            self.queue.push(0.0, (_EVAL, None))
            dyn = self.dynamics
            for i in range(self.n):
                if dyn is not None and dyn.offline[i]:
                    dyn.freeze(i, (_NODE, i, Started()))  # starts when it first comes online
                else:
                    self.queue.push(0.0, (_NODE, i, Started()))
            if dyn is not None and math.isfinite(dyn.next_time()):
                self.queue.push(dyn.next_time(), (_DYN,))
            self.started = True
        # The loop allocates millions of short-lived objects, each freed by reference counting,
        # which keeps triggering the cyclic collector; freezing what exists now (datasets, models,
        # the setup) spares every collection a walk over it, and a higher first-generation
        # threshold lets most messages die before a collection sees them (~10% of the engine's
        # time at 256 nodes). Cycles are still collected; results do not depend on it.
        gc.freeze()
        threshold = gc.get_threshold()
        gc.set_threshold(max(threshold[0], _GC_GEN0_THRESHOLD), *threshold[1:])
        try:
            end = self._loop()
        finally:
            gc.set_threshold(*threshold)
            gc.unfreeze()
            self.spill.close()  # what is still queued is never read again
        self._transmissions_done(self.net.advance_rounds(end))  # counted as sent, not delivered
        self.now = end
        if self.last_eval_time < end:
            self._evaluate()
        self._flush_delivered_bytes()
        return RunResult(
            virtual_time_s=end,
            wall_time_s=self.wall_before + wallclock.perf_counter() - t0,
            train_wall_s=self.train_wall,
            eval_wall_s=self.eval_wall,
            iterations=np.array([p.iteration for p in self.protocols]),
            bytes_sent=self.net.sent_by_node.copy(),
            counters=self.counters,
            messages_delivered=self.messages_delivered,
            messages_dropped=self.messages_dropped,
            train_batches=self.train_batches,
            train_jobs=self.train_jobs,
            finished_all=self.finished == self.n,
            message_log=self.message_log,
            churn=self._churn_summary(),
            threads=self.threads,
            eval_models=self.evaluator.models_evaluated,
            spill=self.spill.summary(),
        )

    def _loop(self) -> float:
        """Process events and transmissions until all nodes finish or time runs out; the end."""
        net, queue, checkpoint = self.net, self.queue, self._checkpoint
        while True:
            if self.finished == self.n:  # checked every event: a counter, not a scan
                return self.now
            t_event = queue.peek_time()
            t_net = net.next_completion_time()
            t_next = min(t_event, t_net)
            if t_next > self.stop_time:
                return self.stop_time
            if math.isinf(t_next):  # nothing can happen any more
                return self.now
            # Between two events: every earlier one is fully handled, nothing of the next one
            # has happened (asking the network for t_net above only recomputes what it would
            # recompute anyway), so the state saved here is all a resumed run needs.
            if checkpoint is not None and checkpoint.due(t_next):
                self.checkpoint_at = t_next
                checkpoint.save(self)
            if t_net <= t_event:
                self._transmissions_done(net.advance_rounds(t_net))
                self.now = t_net
            else:
                time, seq, item = queue.pop_entry()
                # nothing finishes and no rate update is due before t_net > time
                net.skip_to(time)
                self.now = time
                if item[0] == _DELIVER:  # the most frequent event
                    self._deliver_batch(time, seq, item[1])
                else:
                    self._dispatch(item)

    # -----------------------------------------------------------------------------------------
    def _transmissions_done(self, rounds: list[tuple[float, list[int]]]) -> None:
        """Schedule the delivery of messages whose last byte has left, latency later.

        ``rounds``: ids by finishing time, from ``FlowNetwork.advance_rounds``. Messages
        delivered at the same instant share one queue entry, in completion order. One entry per
        message, pushed in this order, would pop in the same order: their keys are consecutive,
        so nothing else can come between two of them at the same time.
        """
        lat = self.net.uniform_latency
        if lat is not None:  # one delivery time per round
            for finish, ids in rounds:
                self.queue.push(finish + lat, (_DELIVER, ids))
            return
        messages, latency = self.messages, self.net.latency
        batches: dict[float, list[int]] = {}
        for finish, ids in rounds:
            for msg_id in ids:
                msg = messages[msg_id][0]
                t = finish + latency(msg.src, msg.dst)
                batch = batches.get(t)
                if batch is None:
                    batches[t] = [msg_id]
                else:
                    batch.append(msg_id)
        for t, ids in batches.items():
            self.queue.push(t, (_DELIVER, ids))

    def _deliver_batch(self, time: float, seq: int, ids: list[int]) -> None:
        """Deliver messages due at ``time``, in order, as one event each would.

        Between two of them the event loop would check whether every node is done and whether a
        transmission completes (or a rate update is due) first; that can only change when a
        protocol acted. Then the rest goes back into the queue under the same key.
        """
        messages, log, protocols = self.messages, self.message_log, self.protocols
        delivered, data_b, meta_b, received = self._delivered_bytes
        last = len(ids) - 1
        for k, msg_id in enumerate(ids):
            msg, (nbytes, data, meta) = messages.pop(msg_id)
            if type(msg.payload) is SpilledPayload:
                msg.payload = self.spill.get(msg.payload)
            src, dst = msg.src, msg.dst
            delivered[src] += nbytes
            data_b[src] += data
            meta_b[src] += meta
            received[dst] += nbytes
            self.messages_delivered += 1
            if log is not None:
                log.append((src, dst, msg.kind, msg.iteration, nbytes, msg.sent_at, self.now))
            # _feed(dst, MessageArrived(msg)), without building the event
            proto = protocols[dst]
            actions = proto.handle_message(msg)
            if not actions:  # most deliveries
                continue
            self._carry_out(dst, proto, actions)
            if self.round_every is not None and proto.iteration >= self.round_target:
                self._round_progress(dst)
            if k < last:
                if self.finished == self.n:
                    return
                if self.net.next_completion_time() <= time:
                    self.queue.requeue(time, seq, (_DELIVER, ids[k + 1 :]))
                    return

    def _dispatch(self, item: tuple) -> None:
        kind = item[0]
        if kind == _NODE:
            _, node, event = item
            if isinstance(event, TrainingDone):
                self._finish_training(node)
            self._feed(node, event)
        elif kind == _DYN:
            dyn = self.dynamics
            assert dyn is not None
            dyn.apply_due(self)
            if math.isfinite(dyn.next_time()):
                self.queue.push(dyn.next_time(), (_DYN,))
        elif kind == _EVAL:
            self._evaluate()
            nxt = self.now + self.eval_every_s
            if nxt <= self.stop_time and self.round_every is None:
                self.queue.push(nxt, (_EVAL, None))

    def _feed(self, node: int, event) -> None:
        """Hand an event to a node and carry out its actions."""
        proto = self.protocols[node]
        actions = proto.handle(event)
        if actions:
            self._carry_out(node, proto, actions)
        if self.round_every is not None and proto.iteration >= self.round_target:
            self._round_progress(node)

    def _round_progress(self, node: int) -> None:
        """Evaluate once the last node reaches the round target (eval.every_iterations)."""
        self.round_reached.add(node)
        while len(self.round_reached) == self.n:
            self._evaluate()
            self.round_target += self.round_every
            target = self.round_target
            self.round_reached = {i for i, p in enumerate(self.protocols) if p.iteration >= target}

    def _carry_out(self, node: int, proto: Protocol, actions: list) -> None:
        """Carry out a node's actions in order."""
        sends: list[Send] = []
        for action in actions:
            if type(action) is Send:  # most actions are sends: no pattern matching for them
                sends.append(action)
                continue
            if sends:  # a run of sends goes to the network as one batch, in order
                self._send_many(node, sends)
                sends = []
            self._act(node, proto, action)
        if sends:
            self._send_many(node, sends)

    def _send_many(self, node: int, sends: list[Send]) -> None:
        """Queue a node's consecutive sends: each a message on its connection, as one batch."""
        if self.dynamics is not None and self.dynamics.any_offline:
            sends = [a for a in sends if not self.dynamics.send_lost(a.dest)]
            if not sends:
                return
        dests = [action.dest for action in sends]
        if node in dests or min(dests) < 0 or max(dests) >= self.n:
            bad = next(d for d in dests if d == node or not 0 <= d < self.n)
            raise ValueError(f"node {node} sends to invalid destination {bad}")
        messages, now = self.messages, self.now
        first = msg_id = self._next_msg_id
        sized: dict[int, tuple[int, int, int]] = {}  # id(payload) -> sizes; payloads are shared
        sizes: list[int] = []
        spill = self.spill.over_budget(messages.nbytes)
        burst: list[Message] = []
        for action in sends:
            payload = action.payload
            # positional (id, sent_at): keyword arguments make this call nearly twice as slow
            msg = Message(node, action.dest, action.kind, action.iteration, payload, msg_id, now)
            size = sized.get(id(payload))
            if size is None:
                size = sized[id(payload)] = (msg.nbytes, msg.data_bytes, msg.meta_bytes)
            messages[msg_id] = (msg, size)
            sizes.append(size[0])
            msg_id += 1
            if spill:
                burst.append(msg)
        if spill:
            self.spill.spill_burst(burst)
        self._next_msg_id = msg_id
        self.net.enqueue_many(node, range(first, msg_id), dests, sizes)

    def _flush_delivered_bytes(self) -> None:
        """Add the delivered bytes counted since the last flush to ``counters``."""
        c = self.counters
        for total, pending in zip(
            (c.delivered, c.data, c.meta, c.received), self._delivered_bytes, strict=True
        ):
            total += np.array(pending, dtype=np.float64)
            pending[:] = [0] * self.n

    def _act(self, node: int, proto: Protocol, action) -> None:
        """Carry out one action other than ``Send`` (``_carry_out`` batches those)."""
        match action:  # the most frequent first: a protocol records several values per iteration
            case Record(metric=metric, value=value):
                self.recorder.add(self.now, node, proto.iteration, metric, value)
            case Train(steps=steps):
                if node in self.jobs:
                    raise RuntimeError(f"node {node} asked to train while already training")
                job = TrainJob(
                    start=self.models[node].clone(), batches=self.streams[node].take(steps)
                )
                self.jobs[node] = _Job(job)
                done = self.now + training_time(self.step_time_s, self.compute_factors[node], steps)
                self.queue.push(done, (_NODE, node, TrainingDone(steps)))
            case DropPending(before_iteration=before):
                # what the sender's buffers already hold is not recalled (send_buffer.py;
                # recall_in_flight = false keeps the message in transmission)
                committed = self.net.committed(node)
                ids = [
                    m
                    for m in self.net.pending(node)
                    if (before is None or self.messages[m][0].iteration < before)
                    and m not in committed
                ]
                for msg_id, sent in self.net.cancel(ids).items():
                    self.counters.wasted[node] += sent
                    del self.messages[msg_id]
                    self.messages_dropped += 1
            case SetTimer(delay_s=delay, tag=tag):
                self.queue.push(self.now + delay, (_NODE, node, TimerFired(tag)))
            case Finish():
                self.finished += 1
                self.recorder.add(self.now, node, proto.iteration, "finished", 1.0)
            case _:
                raise TypeError(f"unknown action {action!r} from node {node}")

    def _finish_training(self, node: int) -> None:
        pending = self.jobs.pop(node)
        if pending.result is None:
            # the first result that is needed: run every job not yet computed in one batch
            todo = [(i, j) for i, j in self.jobs.items() if j.result is None]
            todo.insert(0, (node, pending))
            t0 = wallclock.perf_counter()
            if self.batched:
                results = self.trainer.run([j.job for _, j in todo])
                losses = self.trainer.last_loss
            else:
                results = torch.stack([self.trainer.run_one_reference(j.job) for _, j in todo])
                losses = None
            self.train_wall += wallclock.perf_counter() - t0
            self.train_batches += 1
            self.train_jobs += len(todo)
            for k, (_, j) in enumerate(todo):
                j.result = results[k]
                j.loss = float(losses[k]) if losses is not None else None
        self.models[node].copy_(pending.result)
        if pending.loss is not None:
            self.recorder.add(
                self.now, node, self.protocols[node].iteration, "train_loss", pending.loss
            )

    def _evaluate(self) -> None:
        self._flush_delivered_bytes()
        t0 = wallclock.perf_counter()
        setup = self.setup
        nodes = setup.eval_nodes
        out = self.evaluator.evaluate(
            self.models[torch.as_tensor(nodes)],
            test_indices=setup.test_sets(nodes),
            subset=setup.eval_subset,
        )
        self.eval_wall += wallclock.perf_counter() - t0
        rec, t = self.recorder, self.now
        sent = self.net.sent_by_node
        c = self.counters
        for k, i in enumerate(nodes):
            it = self.protocols[i].iteration
            for metric, values in out.items():
                rec.add(t, int(i), it, f"test_{metric}", float(values[k]))
            rec.add(t, int(i), it, "bytes_sent", float(sent[i]))
            rec.add(t, int(i), it, "bytes_wasted", float(c.wasted[i]))
        iters = np.array([self.protocols[i].iteration for i in nodes])
        for metric, values in out.items():
            rec.add_spread(t, int(iters.min()), f"test_{metric}", values.double().numpy())
        rec.add(t, ALL_NODES, int(iters.min()), "bytes_sent_mean", float(sent.mean()))
        rec.add(t, ALL_NODES, int(iters.min()), "bytes_delivered_mean", float(c.delivered.mean()))
        rec.add(t, ALL_NODES, int(iters.min()), "bytes_wasted_mean", float(c.wasted.mean()))
        rec.add(t, ALL_NODES, int(iters.min()), "iteration_mean", float(iters.mean()))
        self.last_eval_time = t
        self.last_mean_acc = float(out["acc"].double().mean()) if "acc" in out else None
        if self.progress is not None:
            self.progress(t, self.last_mean_acc)

    def _churn_summary(self) -> dict | None:
        """What churn lost, for summary.json (None when dynamics are off)."""
        dyn = self.dynamics
        if dyn is None:
            return None
        return {
            "messages_lost": dyn.messages_lost,
            "bytes_lost": float(dyn.bytes_lost.sum()),
            "transitions": dyn.transitions,
            "offline_at_end": int(sum(dyn.offline)),
        }

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a run built from the same config needs to go on exactly as this one would.

        Valid between events (the ``CheckpointHook`` points of the loop). Pending training jobs
        are saved as they are (snapshot, minibatches, and the result if the batch that computed
        it already ran), so a resumed run batches the same jobs together and computes the same
        numbers. Reading the state changes nothing. Plain SGD keeps no optimizer state: the
        models are all of it.
        """
        messages = list(self.messages.values())
        log = self.message_log
        # spilled payloads are read back (once per payload: pickling keeps them shared)
        unspilled: dict[int, Any] = {}

        def payload(msg: Message) -> Any:
            p = msg.payload
            if type(p) is not SpilledPayload:
                return p
            if p.offset not in unspilled:
                unspilled[p.offset] = self.spill.get(p)
            return unspilled[p.offset]

        return {
            "n": self.n,
            "numel": int(self.models.shape[1]),
            "started": self.started,
            "now": self.now,
            "models": self.models,
            "queue": self.queue.state_dict(_encode_item),
            "net": self.net.state_dict(),
            "protocols": [p.state_dict() for p in self.protocols],
            "streams": [s.state_dict() for s in self.streams],
            "jobs": [
                [node, j.job.start, j.job.batches, j.result, j.loss]
                for node, j in self.jobs.items()
            ],
            "messages": {
                "src": [m.src for m, _ in messages],
                "dst": [m.dst for m, _ in messages],
                "kind": [m.kind for m, _ in messages],
                "iteration": [m.iteration for m, _ in messages],
                "payload": [payload(m) for m, _ in messages],
                "id": [m.id for m, _ in messages],
                "sent_at": np.array([m.sent_at for m, _ in messages], dtype=np.float64),
                "sizes": [list(size) for _, size in messages],
                "extra": [m.extra for m, _ in messages],
            },
            "next_msg_id": self._next_msg_id,
            "counters": {
                k: getattr(self.counters, k)
                for k in ("delivered", "wasted", "data", "meta", "received")
            },
            "delivered_bytes": [list(row) for row in self._delivered_bytes],
            "finished": self.finished,
            "messages_delivered": self.messages_delivered,
            "messages_dropped": self.messages_dropped,
            "message_log": None if log is None else [list(row) for row in log],
            "train_batches": self.train_batches,
            "train_jobs": self.train_jobs,
            "train_wall": self.train_wall,
            "eval_wall": self.eval_wall,
            "last_eval_time": self.last_eval_time,
            "last_mean_acc": self.last_mean_acc,
            "round_target": self.round_target,
            "round_reached": sorted(self.round_reached),
            "recorder": self.recorder.state_dict(),
            "wall_time_s": self.wall_before + wallclock.perf_counter() - self._wall_start,
            "checkpoint_at": self.checkpoint_at,
            **(
                {"dynamics": self.dynamics.state_dict(_encode_item)}
                if self.dynamics is not None
                else {}
            ),
            "rng": {
                "torch": torch.get_rng_state(),
                "torch_cuda": (
                    torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
                ),
                "numpy": list(np.random.get_state()),
                "python": _python_rng_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over a state saved by ``state_dict`` of a simulator built from the same config.

        Call it on a fresh simulator, then ``run()`` goes on from there.
        """
        numel = int(self.models.shape[1])
        if state["n"] != self.n or state["numel"] != numel:
            raise ValueError(
                f"state of {state['n']} nodes x {state['numel']} parameters does not fit this "
                f"run ({self.n} x {numel})"
            )
        self.started = bool(state["started"])
        self.now = float(state["now"])
        self.models.copy_(state["models"])  # in place: the protocols hold views of its rows
        self.queue.load_state_dict(state["queue"], _decode_item)
        self.net.load_state_dict(state["net"])
        for proto, s in zip(self.protocols, state["protocols"], strict=True):
            proto.load_state_dict(s)
        for stream, s in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(s)
        device = self.trainer.device
        self.jobs = {}
        for node, start, batches, result, loss in state["jobs"]:
            self.jobs[int(node)] = _Job(
                TrainJob(start=start, batches=batches),
                None if result is None else result.to(device),
                None if loss is None else float(loss),
            )
        m = state["messages"]
        self.messages = PendingMessages()
        for src, dst, kind, it, payload, msg_id, sent_at, sizes, extra in zip(
            m["src"], m["dst"], m["kind"], m["iteration"], m["payload"], m["id"],
            m["sent_at"].tolist(), m["sizes"], m["extra"], strict=True,
        ):  # fmt: skip
            msg = Message(src, dst, kind, it, payload, msg_id, sent_at)
            msg.extra = extra
            self.messages[msg_id] = (msg, tuple(sizes))
        self._next_msg_id = int(state["next_msg_id"])
        for k, values in state["counters"].items():
            getattr(self.counters, k)[:] = values
        self._delivered_bytes = [[int(v) for v in row] for row in state["delivered_bytes"]]
        self.finished = int(state["finished"])
        self.messages_delivered = int(state["messages_delivered"])
        self.messages_dropped = int(state["messages_dropped"])
        log = state["message_log"]
        self.message_log = None if log is None else [tuple(row) for row in log]
        self.train_batches = int(state["train_batches"])
        self.train_jobs = int(state["train_jobs"])
        self.train_wall = float(state["train_wall"])
        self.eval_wall = float(state["eval_wall"])
        self.last_eval_time = float(state["last_eval_time"])
        self.last_mean_acc = state["last_mean_acc"]
        self.round_target = int(state["round_target"])
        self.round_reached = {int(i) for i in state["round_reached"]}
        self.recorder.load_state_dict(state["recorder"])
        self.wall_before = float(state["wall_time_s"])
        self.checkpoint_at = state["checkpoint_at"]
        if (self.dynamics is None) != ("dynamics" not in state):
            raise ValueError("the saved state and this run differ in [dynamics]/[churn]")
        if self.dynamics is not None:
            self.dynamics.load_state_dict(state["dynamics"], self, _decode_item)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].to(torch.uint8))
        if rng["torch_cuda"]:
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in rng["torch_cuda"]])
        np.random.set_state(tuple(rng["numpy"]))
        _set_python_rng_state(rng["python"])


# event queue items <-> plain values
def _encode_item(item: tuple) -> list:
    kind = item[0]
    if kind == _DELIVER:
        return [kind, item[1]]
    if kind in (_EVAL, _DYN):
        return [kind]
    _, node, event = item
    if type(event) is TrainingDone:
        return [kind, node, "training_done", event.steps]
    if type(event) is TimerFired:
        return [kind, node, "timer", event.tag]
    if type(event) is Started:
        return [kind, node, "started"]
    raise TypeError(f"cannot save queued event {event!r}")


def _decode_item(value: list) -> tuple:
    kind = value[0]
    if kind == _DELIVER:
        return (_DELIVER, [int(i) for i in value[1]])
    if kind == _EVAL:
        return (_EVAL, None)
    if kind == _DYN:
        return (_DYN,)
    if kind != _NODE:
        raise ValueError(f"unknown queued event kind {kind!r}")
    node, name = int(value[1]), value[2]
    if name == "training_done":
        return (_NODE, node, TrainingDone(int(value[3])))
    if name == "timer":
        return (_NODE, node, TimerFired(str(value[3])))
    if name == "started":
        return (_NODE, node, Started())
    raise ValueError(f"unknown queued event {name!r}")


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))
