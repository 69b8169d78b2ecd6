"""Flow-level network model: FIFO connections sharing node capacities max-min fairly.

Each node has an upload and a download capacity (bytes/s). Messages from a sender to one receiver
go through one FIFO connection, so only the head message of each (sender, receiver) queue is
transmitting: that message is a *flow*. Transmitting flows share every resource they cross (the
sender's uplink, the receiver's downlink and optional shared links) max-min fairly, and the
allocation is recomputed whenever a flow starts, ends or is cancelled. Between two such changes
rates are constant, so finishing times follow exactly from the remaining bytes.

The model is a pure state machine with no event queue of its own: the engine asks for
``next_completion_time()``, calls ``advance_to(t)`` and adds ``latency(src, dst)`` to each finishing
time to get the delivery time. Rates are recomputed lazily (at the next query), which is
observationally the same as recomputing at each change because no time passes in between.

A flow whose resources all have infinite capacity would get an infinite rate: it finishes at the
instant it starts (this is how the ``ideal`` preset delivers instantly). A zero-byte message also
finishes at the instant it starts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# A resource whose fair level is within this relative distance of the lowest level saturates in
# the same round: ties in exact arithmetic must not split into two rounds because of rounding.
SATURATION_RTOL = 1e-9
# A flow is finished when its remaining bytes are below this fraction of its size (at least
# FINISH_ATOL bytes), so rounding never leaves a flow with 1e-12 bytes to send.
FINISH_RTOL = 1e-9
FINISH_ATOL = 1e-9


def max_min_rates(
    caps: np.ndarray, entry_flow: np.ndarray, entry_res: np.ndarray, n_flows: int
) -> np.ndarray:
    """Max-min fair rates by progressive filling.

    ``caps[r]`` is the capacity of resource r; flow ``entry_flow[e]`` crosses resource
    ``entry_res[e]``. All unfrozen flows grow together; when a resource saturates, the flows
    crossing it freeze at the current level. Infinite resources never saturate; a flow crossing
    no finite resource gets ``inf``. Each round saturates at least one resource, so there are at
    most as many rounds as resources, each a few vectorized passes over the incidence.
    """
    rates = np.full(n_flows, np.inf)
    finite = np.isfinite(caps[entry_res])
    # Work on the crossed finite resources only, renumbered 0..R-1.
    res_ids, e_res = np.unique(entry_res[finite], return_inverse=True)
    e_flow = entry_flow[finite]
    room = caps[res_ids].astype(np.float64)  # capacity not yet taken by frozen flows
    count = np.bincount(e_res, minlength=len(res_ids)).astype(np.float64)  # unfrozen flows
    level = np.empty(len(res_ids))
    while len(e_flow):
        # Fair share each resource could still give its unfrozen flows. Levels never decrease
        # from round to round; the clamp only guards against rounding.
        level.fill(np.inf)
        np.divide(np.maximum(room, 0.0), count, out=level, where=count > 0)
        lowest = level.min()
        saturated = level <= lowest * (1.0 + SATURATION_RTOL)
        newly = np.zeros(n_flows, dtype=bool)
        newly[e_flow[saturated[e_res]]] = True
        rates[newly] = lowest
        # Frozen flows leave the incidence, so later rounds only touch what is still growing.
        leaving = newly[e_flow]
        taken = np.bincount(e_res[leaving], minlength=len(res_ids))
        room -= taken * lowest
        count -= taken
        e_flow, e_res = e_flow[~leaving], e_res[~leaving]
    return rates


@dataclass(slots=True)
class _Msg:
    src: int
    dst: int
    nbytes: int
    slot: int = -1  # index in the flow arrays while transmitting, -1 while queued


class FlowNetwork:
    """Transmission of messages over per-pair FIFO connections sharing capacities max-min fairly.

    ``links`` are capacities (bytes/s) of shared links and ``route(src, dst)`` the indices of the
    links crossed by that pair (none by default); routes are cached per pair.
    """

    def __init__(
        self,
        up_Bps: np.ndarray,
        down_Bps: np.ndarray,
        latency_s: np.ndarray | float = 0.0,
        links: Sequence[float] = (),
        route: Callable[[int, int], Sequence[int]] | None = None,
    ) -> None:
        up = np.array(up_Bps, dtype=np.float64)
        down = np.array(down_Bps, dtype=np.float64)
        if up.ndim != 1 or up.shape != down.shape:
            raise ValueError(
                f"up_Bps and down_Bps must be 1-D of one length, got {up.shape}, {down.shape}"
            )
        link_caps = np.array(links, dtype=np.float64).reshape(-1)
        for name, caps in (("up_Bps", up), ("down_Bps", down), ("links", link_caps)):
            if not np.all(caps > 0):  # also rejects nan; inf is allowed
                raise ValueError(f"{name} must be > 0 (inf allowed), got {caps}")
        n = len(up)
        lat = np.array(latency_s, dtype=np.float64)
        if lat.ndim not in (0, 2) or (lat.ndim == 2 and lat.shape != (n, n)):
            raise ValueError(f"latency_s must be a scalar or ({n}, {n}), got shape {lat.shape}")
        if not np.all(np.isfinite(lat) & (lat >= 0)):
            raise ValueError("latency_s must be finite and >= 0")
        self.n = n
        self._latency = lat
        # Resources: uplink i -> i, downlink j -> n + j, shared link k -> 2n + k.
        self._caps = np.concatenate([up, down, link_caps])
        self._n_links = len(link_caps)
        self._route_fn = route
        self._routes: dict[tuple[int, int], tuple[int, ...]] = {}

        self.now = 0.0
        self.sent_by_node = np.zeros(n)
        self.received_by_node = np.zeros(n)
        self._msgs: dict[int, _Msg] = {}  # pending messages, in enqueue order
        self._queues: dict[tuple[int, int], deque[int]] = {}
        # Transmitting flows live in slots of parallel arrays so that accounting is vectorized;
        # freed slots are reused (deterministically, last freed first).
        self._slot_msg = np.full(0, -1, dtype=np.int64)
        self._src = np.zeros(0, dtype=np.int64)
        self._dst = np.zeros(0, dtype=np.int64)
        self._size = np.zeros(0)
        self._sent = np.zeros(0)
        self._rate = np.zeros(0)
        self._start_seq = np.zeros(0, dtype=np.int64)  # orders completions that tie in time
        self._slot_route: list[tuple[int, ...]] = []
        self._free: list[int] = []
        self._seq = 0
        self._dirty = False  # rates must be recomputed before use

    # -- queries ---------------------------------------------------------------------------------

    def latency(self, src: int, dst: int) -> float:
        """Propagation delay added by the engine after a message's last byte is sent."""
        return float(self._latency if self._latency.ndim == 0 else self._latency[src, dst])

    def rate(self, msg_id: int) -> float:
        """Current rate in bytes/s (0 while queued); KeyError if not pending."""
        msg = self._msgs[msg_id]
        if msg.slot < 0:
            return 0.0
        self._refresh()
        return float(self._rate[msg.slot])

    def bytes_sent(self, msg_id: int) -> float:
        """Bytes of a pending message transmitted so far; KeyError if not pending."""
        msg = self._msgs[msg_id]
        return 0.0 if msg.slot < 0 else float(self._sent[msg.slot])

    def pending(self, src: int | None = None) -> list[int]:
        """Ids of queued or transmitting messages (of ``src`` if given), in enqueue order."""
        return [i for i, m in self._msgs.items() if src is None or m.src == src]

    def next_completion_time(self) -> float:
        """When the earliest transmitting flow finishes at current rates; inf if none."""
        self._refresh()
        slots = self._active_slots()
        if len(slots) == 0:
            return math.inf
        return self.now + float(self._time_to_finish(slots).min())

    # -- changes ---------------------------------------------------------------------------------

    def enqueue(self, msg_id: int, src: int, dst: int, nbytes: int) -> None:
        """Queue a message at ``now``; it starts at once if its connection is idle."""
        if msg_id in self._msgs:
            raise ValueError(f"message {msg_id} is already pending")
        if not (0 <= src < self.n and 0 <= dst < self.n) or src == dst:
            raise ValueError(f"bad pair ({src}, {dst}) for {self.n} nodes")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self._msgs[msg_id] = _Msg(src, dst, nbytes)
        queue = self._queues.setdefault((src, dst), deque())
        queue.append(msg_id)
        if len(queue) == 1:
            self._start(msg_id)

    def advance_to(self, t: float) -> list[tuple[int, float]]:
        """Transmit from ``now`` to ``t``; return the messages finished by ``t`` as (id, time)."""
        if not math.isfinite(t) or t < self.now:
            raise ValueError(f"cannot advance from {self.now} to {t}")
        done: list[tuple[int, float]] = []
        while True:
            self._refresh()
            slots = self._active_slots()
            if len(slots) == 0:
                break
            ttf = self._time_to_finish(slots)
            dt = float(ttf.min())
            if self.now + dt <= t:
                self._transmit(slots, dt)
                self.now = self.now + dt
                # The earliest flows finish now by construction; force them so the loop progresses.
                finished = slots[(ttf <= dt) | self._finished(slots)]
            else:
                self._transmit(slots, t - self.now)
                self.now = t
                finished = slots[self._finished(slots)]  # within rounding of finishing at t
                if len(finished) == 0:
                    break
            for slot in finished[np.argsort(self._start_seq[finished], kind="stable")]:
                msg_id = int(self._slot_msg[slot])
                self._complete(slot)
                done.append((msg_id, self.now))
        self.now = t
        return done

    def cancel(self, msg_ids: Iterable[int]) -> dict[int, float]:
        """Drop pending messages at ``now``; return id -> bytes already transmitted.

        Unknown or finished ids are ignored. An in-flight message's share is freed at once and the
        next message of its connection starts.
        """
        out: dict[int, float] = {}
        for msg_id in msg_ids:
            msg = self._msgs.get(msg_id)
            if msg is None:
                continue
            if msg.slot < 0:
                self._queues[(msg.src, msg.dst)].remove(msg_id)
                del self._msgs[msg_id]
                out[msg_id] = 0.0
            else:
                out[msg_id] = float(self._sent[msg.slot])
                self._finish_slot(msg.slot)
        return out

    # -- internals -------------------------------------------------------------------------------

    def _active_slots(self) -> np.ndarray:
        return np.flatnonzero(self._slot_msg >= 0)

    def _time_to_finish(self, slots: np.ndarray) -> np.ndarray:
        remaining = self._size[slots] - self._sent[slots]
        rate = self._rate[slots]
        with np.errstate(divide="ignore", invalid="ignore"):
            ttf = np.where(rate > 0, remaining / rate, np.inf)
        return np.where(self._finished(slots), 0.0, np.maximum(ttf, 0.0))

    def _finished(self, slots: np.ndarray) -> np.ndarray:
        size = self._size[slots]
        return size - self._sent[slots] <= np.maximum(FINISH_RTOL * size, FINISH_ATOL)

    def _transmit(self, slots: np.ndarray, dt: float) -> None:
        if dt <= 0:  # also avoids inf * 0 for instantaneous flows
            return
        delta = self._rate[slots] * dt
        self._sent[slots] += delta
        self.sent_by_node += np.bincount(self._src[slots], weights=delta, minlength=self.n)
        self.received_by_node += np.bincount(self._dst[slots], weights=delta, minlength=self.n)

    def _route(self, src: int, dst: int) -> tuple[int, ...]:
        key = (src, dst)
        if key not in self._routes:
            links = tuple(int(k) for k in self._route_fn(src, dst)) if self._route_fn else ()
            if any(not 0 <= k < self._n_links for k in links):
                raise ValueError(f"route({src}, {dst}) = {links} names a link out of range")
            self._routes[key] = links
        return self._routes[key]

    def _start(self, msg_id: int) -> None:
        msg = self._msgs[msg_id]
        route = self._route(msg.src, msg.dst)
        if not self._free:
            self._grow()
        slot = self._free.pop()
        msg.slot = slot
        self._slot_msg[slot] = msg_id
        self._src[slot], self._dst[slot] = msg.src, msg.dst
        self._size[slot] = msg.nbytes
        self._sent[slot] = 0.0
        self._rate[slot] = 0.0
        self._start_seq[slot] = self._seq
        self._seq += 1
        self._slot_route[slot] = route
        self._dirty = True

    def _complete(self, slot: int) -> None:
        # Book the rounding remainder so node counters add up to exactly the message sizes.
        rest = self._size[slot] - self._sent[slot]
        self.sent_by_node[self._src[slot]] += rest
        self.received_by_node[self._dst[slot]] += rest
        self._finish_slot(slot)

    def _finish_slot(self, slot: int) -> None:
        """Remove the head message in ``slot`` and start the next one of its connection."""
        msg_id = int(self._slot_msg[slot])
        msg = self._msgs.pop(msg_id)
        self._slot_msg[slot] = -1
        self._free.append(slot)
        queue = self._queues[(msg.src, msg.dst)]
        queue.popleft()
        if queue:
            self._start(queue[0])
        else:
            del self._queues[(msg.src, msg.dst)]
        self._dirty = True

    def _grow(self) -> None:
        old = len(self._slot_msg)
        new = max(64, 2 * old)
        pad = new - old
        self._slot_msg = np.concatenate([self._slot_msg, np.full(pad, -1, dtype=np.int64)])
        self._src = np.concatenate([self._src, np.zeros(pad, dtype=np.int64)])
        self._dst = np.concatenate([self._dst, np.zeros(pad, dtype=np.int64)])
        self._size = np.concatenate([self._size, np.zeros(pad)])
        self._sent = np.concatenate([self._sent, np.zeros(pad)])
        self._rate = np.concatenate([self._rate, np.zeros(pad)])
        self._start_seq = np.concatenate([self._start_seq, np.zeros(pad, dtype=np.int64)])
        self._slot_route.extend([()] * pad)
        self._free.extend(range(new - 1, old - 1, -1))  # pop() hands out low slots first

    def _refresh(self) -> None:
        """Recompute the max-min allocation if the set of flows changed."""
        if not self._dirty:
            return
        self._dirty = False
        slots = self._active_slots()
        if len(slots) == 0:
            return
        flows = np.arange(len(slots))
        entry_flow = [flows, flows]
        entry_res = [self._src[slots], self.n + self._dst[slots]]
        if self._n_links:
            routes = [self._slot_route[s] for s in slots]
            lengths = np.array([len(r) for r in routes], dtype=np.int64)
            entry_flow.append(np.repeat(flows, lengths))
            entry_res.append(
                2 * self.n
                + np.fromiter(
                    (k for r in routes for k in r), dtype=np.int64, count=int(lengths.sum())
                )
            )
        self._rate[slots] = max_min_rates(
            self._caps, np.concatenate(entry_flow), np.concatenate(entry_res), len(slots)
        )
