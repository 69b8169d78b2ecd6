"""The virtual-time engine: drives one protocol object per node over a modelled network.

Time is virtual (float64 seconds). The engine owns every node's model as one row of a
(nodes x parameters) tensor, the network model (``FlowNetwork``) and the compute model, and turns
protocol actions into future events. Local training is lazy: ``Train`` snapshots the node's vector
and schedules the finish; the arithmetic runs when the first pending finish is delivered, for all
pending jobs together in one batched call. Each job starts from its own snapshot, so the result is
the same as running the jobs one by one.

The loop interleaves two sources of time: the event queue, and the network's next transmission
completion (which moves whenever rates are recomputed, so it is asked for, not queued).
"""

from __future__ import annotations

import gc
import math
import time as wallclock
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from peerlearn.codecs.message import Message
from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.experiment import Setup
from peerlearn.protocols.base import (
    DropPending,
    Finish,
    MessageArrived,
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
from peerlearn.sim.compute_model import training_time
from peerlearn.sim.events import EventQueue

# event kinds in the queue
_NODE, _DELIVER, _EVAL = 0, 1, 2


@dataclass
class _Job:
    job: TrainJob
    result: torch.Tensor | None = None
    loss: float | None = None


ProgressFn = Callable[[float, float | None], None]


class Simulator:
    def __init__(
        self,
        setup: Setup,
        recorder: MetricsRecorder | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        cfg = setup.cfg
        self.setup = setup
        self.cfg = cfg
        self.n = cfg.nodes
        self.recorder = recorder or MetricsRecorder()
        self.progress = progress
        torch_device = cfg.compute.device
        if torch_device == "cuda":
            torch.backends.cudnn.allow_tf32 = cfg.compute.tf32
            torch.backends.cuda.matmul.allow_tf32 = cfg.compute.tf32
        spec = setup.model
        ds = setup.dataset
        init = spec.init_vector()
        self.models = init.unsqueeze(0).repeat(self.n, 1).contiguous()
        self.trainer = BatchedTrainer(
            spec, ds.train_x, ds.train_y, lr=cfg.train.lr, device=torch_device
        )
        self.evaluator = BatchedEvaluator(
            spec, ds.test_x, ds.test_y, batch_size=cfg.eval.batch_size, device=torch_device
        )
        self.streams = [setup.stream(i) for i in range(self.n)]
        self.net = setup.network.to_flow_network(cfg.network.rate_update_s)
        self.queue = EventQueue()
        self.now = 0.0
        self.stop_time = cfg.stop.virtual_time_s if cfg.stop.virtual_time_s else math.inf
        self.protocols: list[Protocol] = [setup.protocol(i, self.models[i]) for i in range(self.n)]
        self.jobs: dict[int, _Job] = {}
        # pending message id -> (message, nbytes, data bytes, meta bytes), sized once at the send
        self.messages: dict[int, tuple[Message, int, int, int]] = {}
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

    # -----------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        t0 = wallclock.perf_counter()
        self.queue.push(0.0, (_EVAL, None))
        for i in range(self.n):
            self.queue.push(0.0, (_NODE, i, Started()))
        # The loop allocates millions of short-lived objects, each freed by reference counting,
        # which keeps triggering the cyclic collector; freezing what exists now (datasets, models,
        # the setup) spares every collection a walk over it. Results do not depend on it.
        gc.freeze()
        try:
            end = self._loop()
        finally:
            gc.unfreeze()
        self._transmissions_done(self.net.advance_to(end))  # counted as sent, not delivered
        self.now = end
        if self.last_eval_time < end:
            self._evaluate()
        self._flush_delivered_bytes()
        return RunResult(
            virtual_time_s=end,
            wall_time_s=wallclock.perf_counter() - t0,
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
        )

    def _loop(self) -> float:
        """Process events and transmissions until all nodes finish or time runs out; the end."""
        net, queue = self.net, self.queue
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
            if t_net <= t_event:
                self._transmissions_done(net.advance_to(t_net))
                self.now = t_net
            else:
                time, item = queue.pop()
                # nothing finishes and no rate update is due before t_net > time
                net.skip_to(time)
                self.now = time
                self._dispatch(item)

    # -----------------------------------------------------------------------------------------
    def _transmissions_done(self, completed: list[tuple[int, float]]) -> None:
        """Schedule the delivery of messages whose last byte has left, latency later."""
        for msg_id, finish in completed:
            msg = self.messages[msg_id][0]
            self.queue.push(finish + self.net.latency(msg.src, msg.dst), (_DELIVER, msg_id))

    def _dispatch(self, item: tuple) -> None:
        kind = item[0]
        if kind == _DELIVER:  # the most frequent event
            msg, nbytes, data, meta = self.messages.pop(item[1])
            delivered, data_b, meta_b, received = self._delivered_bytes
            delivered[msg.src] += nbytes
            data_b[msg.src] += data
            meta_b[msg.src] += meta
            received[msg.dst] += nbytes
            self.messages_delivered += 1
            if self.message_log is not None:
                self.message_log.append(
                    (msg.src, msg.dst, msg.kind, msg.iteration, nbytes, msg.sent_at, self.now)
                )
            self._feed(msg.dst, MessageArrived(msg))
        elif kind == _NODE:
            _, node, event = item
            if isinstance(event, TrainingDone):
                self._finish_training(node)
            self._feed(node, event)
        elif kind == _EVAL:
            self._evaluate()
            nxt = self.now + self.cfg.eval.every_s
            if nxt <= self.stop_time:
                self.queue.push(nxt, (_EVAL, None))

    def _feed(self, node: int, event) -> None:
        proto = self.protocols[node]
        if proto.finished:
            return
        for action in proto.handle(event):
            if type(action) is Send:  # most actions are sends: no pattern matching for them
                self._send(node, action)
            else:
                self._act(node, proto, action)

    def _send(self, node: int, action: Send) -> None:
        dest = action.dest
        if dest == node or not 0 <= dest < self.n:
            raise ValueError(f"node {node} sends to invalid destination {dest}")
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        msg = Message(node, dest, action.kind, action.iteration, action.payload, id=msg_id)
        msg.sent_at = self.now
        nbytes = msg.nbytes
        self.messages[msg_id] = (msg, nbytes, msg.data_bytes, msg.meta_bytes)
        self.net.enqueue(msg_id, node, dest, nbytes)

    def _flush_delivered_bytes(self) -> None:
        """Add the delivered bytes counted since the last flush to ``counters``."""
        c = self.counters
        for total, pending in zip(
            (c.delivered, c.data, c.meta, c.received), self._delivered_bytes, strict=True
        ):
            total += np.array(pending, dtype=np.float64)
            pending[:] = [0] * self.n

    def _act(self, node: int, proto: Protocol, action) -> None:
        match action:
            case Train(steps=steps):
                if node in self.jobs:
                    raise RuntimeError(f"node {node} asked to train while already training")
                job = TrainJob(
                    start=self.models[node].clone(), batches=self.streams[node].take(steps)
                )
                self.jobs[node] = _Job(job)
                done = self.now + training_time(
                    self.cfg.compute.step_time_s, self.setup.compute_factors[node], steps
                )
                self.queue.push(done, (_NODE, node, TrainingDone(steps)))
            case Send():
                self._send(node, action)
            case DropPending(before_iteration=before):
                recall = self.cfg.network.recall_in_flight
                ids = [
                    m
                    for m in self.net.pending(node)
                    if (before is None or self.messages[m][0].iteration < before)
                    and (recall or not self.net.transmitting(m))
                ]
                for msg_id, sent in self.net.cancel(ids).items():
                    self.counters.wasted[node] += sent
                    del self.messages[msg_id]
                    self.messages_dropped += 1
            case SetTimer(delay_s=delay, tag=tag):
                self.queue.push(self.now + delay, (_NODE, node, TimerFired(tag)))
            case Record(metric=metric, value=value):
                self.recorder.add(self.now, node, proto.iteration, metric, value)
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
            if self.cfg.compute.batched:
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
