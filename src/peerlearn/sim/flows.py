"""Flow-level network model: FIFO connections sharing node capacities max-min fairly.

Each node has an upload and a download capacity (bytes/s). Messages from a sender to one receiver
go through one FIFO connection, so only the head message of each (sender, receiver) queue is
transmitting: that message is a *flow*. Transmitting flows share every resource they cross (the
sender's uplink, the receiver's downlink and optional shared links) max-min fairly, and the
allocation is recomputed whenever a flow starts, ends or is cancelled. Between two such changes
rates are constant, so each flow's finishing time is known exactly; a flow stores its remaining
bytes at a reference time and is re-based only when its rate changes.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple

import numpy as np

from peerlearn.sim.send_buffer import SendBuffer

# A resource whose fair level is within this relative distance of the lowest level saturates in
# the same round: ties in exact arithmetic must not split into two rounds because of rounding.
SATURATION_RTOL = 1e-9


def max_min_rates(
    caps: np.ndarray, entry_flow: np.ndarray, entry_res: np.ndarray, n_flows: int
) -> np.ndarray:
    """Max-min fair rates by progressive filling: exactly ``max_min_rates_reference``'s floats.

    ``caps[r]`` is the capacity of resource r; flow ``entry_flow[e]`` crosses resource
    ``entry_res[e]``. When every flow crosses exactly two finite resources (an uplink and a
    downlink: networks without shared links), the rounds run on a resources x resources matrix
    of shared flows instead of the flow incidence, so a round is eight NumPy calls on arrays of
    one row of resources whatever the number of flows; rates are assigned once at the end (a
    flow's rate is the level of the first round that saturates one of its two resources).
    Every room, count and level is computed by the same operations in the same order as in the
    reference (a saturated resource's own room and count, never read again there, are set to
    inf here). Other flow sets go to the reference.
    """
    finite = np.isfinite(caps[entry_res])
    res_ids, e_res = np.unique(entry_res[finite], return_inverse=True)
    e_flow = entry_flow[finite]
    if not len(e_flow):
        return np.full(n_flows, np.inf)
    per_flow = np.bincount(e_flow, minlength=n_flows)
    crossing = per_flow[per_flow > 0]
    if crossing.min() != 2 or crossing.max() != 2:
        return max_min_rates_reference(caps, entry_flow, entry_res, n_flows)
    n_res = len(res_ids)
    by_flow = np.argsort(e_flow, kind="stable")
    pair = e_res[by_flow].reshape(-1, 2)  # the two resources of each crossing flow
    room = caps[res_ids].astype(np.float64)
    count = np.bincount(e_res, minlength=n_res).astype(np.float64)  # unfrozen flows
    # flows crossing both a and b. Never cleared: a flow freezes only when one of its two
    # resources saturates, so row s still counts exactly the unfrozen flows between s and every
    # resource that has not saturated yet.
    shared = np.zeros((n_res, n_res))
    np.add.at(shared, (pair[:, 0], pair[:, 1]), 1.0)
    shared += shared.T
    saturated_in = np.full(n_res, n_res, dtype=np.int64)  # the round a resource saturated in
    lowests: list[float] = []
    level, clamped, share = np.empty(n_res), np.empty(n_res), np.empty(n_res)
    scale = 1.0 + SATURATION_RTOL
    # A saturated resource gets room = count = inf: its level is then nan (inf / inf), which
    # the fmin and the comparison skip, and stays so whatever is subtracted from it. A resource
    # left without flows (count 0) has level inf or nan (0 / 0): skipped as well, as the
    # reference's ``where=count > 0`` skips it.
    with np.errstate(divide="ignore", invalid="ignore"):
        while True:
            np.maximum(room, 0.0, out=clamped)
            np.divide(clamped, count, out=level)
            lowest = np.fmin.reduce(level)
            if not lowest < np.inf:
                break
            saturated = (level <= lowest * scale).nonzero()[0]
            # the flows freezing now, per other resource they cross
            if len(saturated) == 1:
                saturated = saturated[0]  # a scalar index: cheaper below
                taken = shared[saturated]
            else:
                taken = shared[saturated].sum(axis=0)
            saturated_in[saturated] = len(lowests)
            lowests.append(lowest)
            np.multiply(taken, lowest, out=share)
            np.subtract(room, share, out=room)
            np.subtract(count, taken, out=count)
            room[saturated] = np.inf
            count[saturated] = np.inf
    rates = np.full(n_flows, np.inf)
    first = np.minimum(saturated_in[pair[:, 0]], saturated_in[pair[:, 1]])
    rates[e_flow[by_flow[::2]]] = np.array(lowests)[first]
    return rates


def max_min_rates_reference(
    caps: np.ndarray, entry_flow: np.ndarray, entry_res: np.ndarray, n_flows: int
) -> np.ndarray:
    """Max-min fair rates by progressive filling, written plainly (any number of resources per
    flow; ``max_min_rates`` matches it bit for bit and falls back to it).

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


class IncrementalFilling:
    """``max_min_rates`` for flows that each cross one uplink and one downlink (no shared
    links, finite capacities), restarted from the first round a change can affect.

    Between two recomputations a few flows start or end. The previous progressive filling is
    kept round by round (each resource's room and count at the start of every round, the
    rounds' levels, the round each resource saturated in). Rounds before ``k0`` run exactly as
    before, so the filling restarts at ``k0`` from the saved state, where ``k0`` is the
    earliest of: the round in which either end of a started or ended flow saturated (before
    it, no changed flow freezes, so every resource's room and the flows that freeze are as
    before), and the first round in which a resource whose flow count changed would have
    joined or undercut the saturating set at its new count (before it, that resource's only
    difference, its count, changes no decision). From ``k0`` on, rounds are computed as in
    ``max_min_rates`` (over all 2n resources: one without flows has count 0 and never
    saturates), so the rates are the same floats as a filling from scratch.
    """

    def __init__(self, caps: np.ndarray) -> None:
        self.n = len(caps) // 2
        self.caps = np.array(caps, dtype=np.float64)
        m = 2 * self.n
        self.pairs = np.zeros((self.n, self.n))  # flows per (src, dst) last time
        self.rounds = -1  # rounds of the last filling; -1: none kept
        # at the start of round k (and after the last round, at index ``rounds``)
        self.room = np.empty((m + 1, m))
        self.count = np.empty((m + 1, m))
        self.lowest = np.empty(m + 1)
        self.threshold = np.empty(m + 1)
        self.saturated_in = np.full(m, m + 1, dtype=np.int64)
        self._count_change = np.zeros(m)  # per resource, flows now minus flows last time

    def rates(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Max-min rates of flows ``src[i] -> dst[i]`` (every pair's uplink and downlink)."""
        n, m = self.n, 2 * self.n
        pairs = np.zeros((n, n))
        np.add.at(pairs, (src, dst), 1.0)
        k0 = self._restart_round(pairs)
        self.pairs = pairs
        shared = np.zeros((m, m))  # flows crossing both resources (see max_min_rates)
        shared[:n, n:] = pairs
        shared[n:, :n] = pairs.T
        if k0 == 0:
            room = self.caps.copy()
            count = np.concatenate([pairs.sum(axis=1), pairs.sum(axis=0)])
        else:
            # the kept rounds before k0 stand, at the new counts (the later ones are redone)
            self.count[: k0 + 1] += self._count_change
            room = self.room[k0].copy()
            count = self.count[k0].copy()
        self.saturated_in[self.saturated_in >= k0] = m + 1
        level, clamped, share = np.empty(m), np.empty(m), np.empty(m)
        scale = 1.0 + SATURATION_RTOL
        k = k0
        with np.errstate(divide="ignore", invalid="ignore"):
            while True:
                self.room[k] = room
                self.count[k] = count
                np.maximum(room, 0.0, out=clamped)
                np.divide(clamped, count, out=level)
                lowest = np.fmin.reduce(level)
                if not lowest < np.inf:
                    break
                threshold = lowest * scale
                self.lowest[k] = lowest
                self.threshold[k] = threshold
                saturated = (level <= threshold).nonzero()[0]
                if len(saturated) == 1:
                    saturated = saturated[0]
                    taken = shared[saturated]
                else:
                    taken = shared[saturated].sum(axis=0)
                self.saturated_in[saturated] = k
                np.multiply(taken, lowest, out=share)
                np.subtract(room, share, out=room)
                np.subtract(count, taken, out=count)
                room[saturated] = np.inf
                count[saturated] = np.inf
                k += 1
        self.rounds = k
        first = np.minimum(self.saturated_in[src], self.saturated_in[n + dst])
        return self.lowest[first]

    def _restart_round(self, pairs: np.ndarray) -> int:
        """The first round the filling for ``pairs`` may differ from the kept one (0: none
        kept); sets ``_count_change``, each resource's change in flow count."""
        if self.rounds < 0:
            return 0
        change = pairs - self.pairs
        src, dst = change.nonzero()
        if not len(src):
            self._count_change = np.zeros(2 * self.n)
            return self.rounds
        n = self.n
        self._count_change = np.concatenate([change.sum(axis=1), change.sum(axis=0)])
        # before the first round that saturates an end of a started or ended flow
        ends = np.concatenate([self.saturated_in[src], self.saturated_in[n + dst]])
        k0 = min(self.rounds, int(ends.min()))
        changed = self._count_change.nonzero()[0]
        if k0 > 0 and len(changed):
            with np.errstate(divide="ignore", invalid="ignore"):
                level = np.maximum(self.room[:k0, changed], 0.0) / (
                    self.count[:k0, changed] + self._count_change[changed]
                )
            early = (level <= self.threshold[:k0, None]).any(axis=1)
            if early.any():
                k0 = int(early.argmax())
        return k0

    def forget(self) -> None:
        """Drop the kept filling (capacities changed, a state was loaded)."""
        self.rounds = -1


# A pending message is a list [src, dst, nbytes, slot, seq]: slot is its index in the flow arrays
# while it transmits, -1 while queued; seq counts enqueues, so it orders a sender's messages.
# (A list, not a class: one is made per message.)
_NBYTES = 2
_SLOT = 3
_SEQ = 4
_Msg = list


def _finish_time(now: float, size: float, rate: float) -> float:
    """When a flow of ``size`` bytes started at ``now`` at ``rate`` bytes/s ends."""
    if size <= 0 or rate == math.inf:
        return now  # empty messages and infinite rates finish at once
    return now + size / rate if rate > 0 else math.inf


def _buffer_state(buffer: SendBuffer | None) -> list[float] | None:
    if buffer is None:
        return None
    state = [float(buffer.kernel_bytes), float(buffer.frames)]
    if buffer.autotune is not None:  # a fixed buffer keeps the two numbers it always had
        state += [float(v) for v in astuple(buffer.autotune)] + [float(buffer.queue_packets)]
    return state


class FlowNetwork:
    """Transmission of messages over per-pair FIFO connections sharing capacities max-min fairly.

    ``links`` are capacities (bytes/s) of shared links and ``route(src, dst)`` the indices of the
    links crossed by that pair (none by default); routes are cached per pair.

    Each transmitting flow keeps its remaining bytes at a reference time, its rate, and hence its
    absolute finishing time. Rates only change when the allocation is recomputed; only then are
    the flows re-based, so an event that changes nothing costs O(1) and finding the next
    completion is one ``min``. Byte counters are derived on demand from the same state.
    """

    def __init__(
        self,
        up_Bps: np.ndarray,
        down_Bps: np.ndarray,
        latency_s: np.ndarray | float = 0.0,
        links: Sequence[float] = (),
        route: Callable[[int, int], Sequence[int]] | None = None,
        rate_update_s: float = 0.0,
        send_buffer: SendBuffer | None = None,
    ) -> None:
        if not (math.isfinite(rate_update_s) and rate_update_s >= 0):
            raise ValueError(f"rate_update_s must be finite and >= 0, got {rate_update_s}")
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
        # one delay for every pair, or rows of Python floats (looked up once per message)
        self._latency_all: float | None = float(lat) if lat.ndim == 0 else None
        self._latency_rows: list[list[float]] = lat.tolist() if lat.ndim == 2 else []
        # the one delay of every pair of distinct nodes (messages never go to self), if any
        self._latency_uniform = self._latency_all
        if lat.ndim == 2 and n > 1:
            off_diagonal = lat[~np.eye(n, dtype=bool)]
            if np.all(off_diagonal == off_diagonal[0]):
                self._latency_uniform = float(off_diagonal[0])
        # Resources: uplink i -> i, downlink j -> n + j, shared link k -> 2n + k.
        self._caps = np.concatenate([up, down, link_caps])
        self._cap_list: list[float] = self._caps.tolist()  # for scalar use on the hot path
        self._n_links = len(link_caps)
        self._filling = self._new_filling()
        self._route_fn = route
        self._routes: dict[tuple[int, int], tuple[int, ...]] = {}

        self.now = 0.0
        self._msgs: dict[int, _Msg] = {}  # pending messages, in enqueue order
        # per sender, its busy connections: receiver -> message ids in order (the first one
        # transmits). Small dicts and short lists keyed by plain ints: nothing to allocate per
        # lookup, and a sender's pending messages are exactly what its connections hold.
        self._conns: dict[int, dict[int, list[int]]] = {}
        self._enqueued = 0  # enqueues so far: the next message's seq
        # bytes of finished messages and of the transmitted part of cancelled ones
        # (Python floats: added to once per message)
        self._done_sent = [0.0] * n
        self._done_recv = [0.0] * n
        # Transmitting flows live in slots of parallel arrays; freed slots are reused
        # (deterministically, last freed first). Free slots have finish = inf.
        self._slot_msg = np.full(0, -1, dtype=np.int64)
        self._src = np.zeros(0, dtype=np.int64)
        self._dst = np.zeros(0, dtype=np.int64)
        self._size = np.zeros(0)
        self._rem = np.zeros(0)  # remaining bytes at time _ref
        self._ref = np.zeros(0)
        self._rate = np.zeros(0)
        self._finish = np.zeros(0)  # absolute finishing time at the current rate
        # min of _finish, or None when a finish time was raised or removed and it must be rescanned
        self._first: float | None = math.inf
        self._start_seq = np.zeros(0, dtype=np.int64)  # orders completions that tie in time
        # per slot, the resources its flow crosses: uplink, downlink, then shared links (2n + k)
        self._slot_res: list[tuple[int, ...]] = []
        self._free: list[int] = []
        self._seq = 0
        self._dirty = False  # the set of connections changed: rates must be recomputed
        # Bounded rate updates (0 = exact): the allocation is recomputed at most every
        # ``rate_update_s``; in between, a new connection takes what is left on its path.
        self.rate_update_s = float(rate_update_s)
        self._last_update = -math.inf
        # sum of current rates per resource (bounded mode), Python floats for the scalar hot path
        self._used: list[float] = [0.0] * len(self._cap_list)
        self.recomputations = 0
        # what a flush cannot recall (None: everything pending can be cancelled)
        self.send_buffer = send_buffer
        # Autotuned buffers grow with what each connection has transmitted over its life
        # (finished messages and the sent part of cancelled ones; the head's progress is added
        # at a flush), and are bounded by the share of its path: the connections each node has
        # opened so far on its uplink and its downlink. Kept only when a buffer is autotuned.
        self._tracks = send_buffer is not None and send_buffer.autotune is not None
        self._acked: dict[tuple[int, int], float] = {}
        self._opened_out = [0] * n
        self._opened_in = [0] * n

    # -- queries ---------------------------------------------------------------------------------

    @property
    def uniform_latency(self) -> float | None:
        """The delay between any two distinct nodes when they all have the same one, else None."""
        return self._latency_uniform

    def latency(self, src: int, dst: int) -> float:
        """Propagation delay added by the engine after a message's last byte is sent."""
        if self._latency_all is not None:
            return self._latency_all
        return self._latency_rows[src][dst]

    def rate(self, msg_id: int) -> float:
        """Current rate in bytes/s (0 while queued); KeyError if not pending."""
        slot = self._msgs[msg_id][_SLOT]
        if slot < 0:
            return 0.0
        self._refresh()
        return float(self._rate[slot])

    def bytes_sent(self, msg_id: int) -> float:
        """Bytes of a pending message transmitted so far; KeyError if not pending."""
        slot = self._msgs[msg_id][_SLOT]
        if slot < 0:
            return 0.0
        return float(self._transmitted(np.array([slot]))[0])

    @property
    def sent_by_node(self) -> np.ndarray:
        """Cumulative bytes transmitted by each node (including partial and cancelled)."""
        slots = self._active_slots()
        part = np.bincount(self._src[slots], self._transmitted(slots), minlength=self.n)
        return np.array(self._done_sent) + part

    @property
    def received_by_node(self) -> np.ndarray:
        """Cumulative bytes that crossed each node's downlink."""
        slots = self._active_slots()
        part = np.bincount(self._dst[slots], self._transmitted(slots), minlength=self.n)
        return np.array(self._done_recv) + part

    def pending(self, src: int | None = None) -> list[int]:
        """Ids of queued or transmitting messages (of ``src`` if given), in enqueue order."""
        if src is None:
            return list(self._msgs)
        conns = self._conns.get(src)
        if not conns:
            return []
        msgs = self._msgs
        ids = [msg_id for queue in conns.values() for msg_id in queue]
        ids.sort(key=lambda msg_id: msgs[msg_id][_SEQ])
        return ids

    def transmitting(self, msg_id: int) -> bool:
        """Whether a pending message has started (it is the head of its connection)."""
        return self._msgs[msg_id][_SLOT] >= 0

    def next_completion_time(self) -> float:
        """When the earliest flow finishes (or a bounded update is due); inf if none."""
        self._refresh()
        return min(max(self._first_finish(), self.now), self._next_update())

    # -- changes ---------------------------------------------------------------------------------

    def enqueue(self, msg_id: int, src: int, dst: int, nbytes: int) -> None:
        """Queue a message at ``now``; it starts at once if its connection is idle."""
        self.enqueue_many(src, (msg_id,), (dst,), (nbytes,))

    def enqueue_many(
        self, src: int, msg_ids: Sequence[int], dsts: Sequence[int], sizes: Sequence[int]
    ) -> None:
        """Queue messages of one sender at ``now``, in order: the same as one ``enqueue`` each.

        One call for a node's burst of sends (DivShare: Ω·r fragments per iteration) starts the
        flows of idle connections together. All messages are checked before any is queued.
        """
        n = self.n
        if not len(msg_ids) == len(dsts) == len(sizes):
            raise ValueError("msg_ids, dsts and sizes must have one length")
        if not msg_ids:
            return
        # checked with builtins over the whole batch (cheap); the culprit is found on failure
        if not self._msgs.keys().isdisjoint(msg_ids):
            dup = next(m for m in msg_ids if m in self._msgs)
            raise ValueError(f"message {dup} is already pending")
        if not 0 <= src < n or src in dsts or min(dsts) < 0 or max(dsts) >= n:
            dst = next(d for d in dsts if not (0 <= src < n and 0 <= d < n) or src == d)
            raise ValueError(f"bad pair ({src}, {dst}) for {n} nodes")
        if min(sizes) < 0:
            raise ValueError(f"nbytes must be >= 0, got {min(sizes)}")
        if len(set(msg_ids)) != len(msg_ids):
            raise ValueError(f"message ids repeat in {msg_ids}")
        msgs = self._msgs
        conns = self._conns.get(src)
        if conns is None:
            conns = self._conns[src] = {}
        if self._tracks:
            self._open(src, dsts)
        seq = self._enqueued
        starts: list[tuple[int, int, _Msg]] = []  # (id, dst, message) of idle connections
        for msg_id, dst, nbytes in zip(msg_ids, dsts, sizes, strict=True):
            msg = msgs[msg_id] = [src, dst, nbytes, -1, seq]
            seq += 1
            queue = conns.get(dst)
            if queue is None:  # the connection is idle: the message starts at once
                conns[dst] = [msg_id]
                starts.append((msg_id, dst, msg))
            else:
                queue.append(msg_id)
        self._enqueued = seq
        if starts:
            self._start_many(src, starts)

    def skip_to(self, t: float) -> None:
        """Move the clock to ``t``, when nothing can happen before it.

        The caller guarantees ``now <= t < next_completion_time()`` with no change since that
        query: no flow finishes and no rate update is due by ``t``, so this is ``advance_to(t)``
        (which would return nothing) without its checks.
        """
        self.now = t

    def advance_to(self, t: float) -> list[tuple[int, float]]:
        """Transmit from ``now`` to ``t``; return the messages finished by ``t`` as (id, time)."""
        return [(msg_id, time) for time, ids in self.advance_rounds(t) for msg_id in ids]

    def advance_rounds(self, t: float) -> list[tuple[float, list[int]]]:
        """``advance_to``, its messages grouped by finishing time: [(time, ids in order)]."""
        if not math.isfinite(t) or t < self.now:
            raise ValueError(f"cannot advance from {self.now} to {t}")
        done: list[tuple[float, list[int]]] = []
        while True:
            self._refresh()
            first = self._first_finish()
            tick = self._next_update()
            if tick < first and tick <= t:
                self.now = tick  # a bounded update is due: _refresh recomputes at the loop top
                continue
            if first > t:
                break
            now = self.now = max(self.now, first)
            finished = (self._finish <= first).nonzero()[0]
            if len(finished) > 1:
                finished = finished[np.argsort(self._start_seq[finished], kind="stable")]
            ids = self._slot_msg[finished].tolist()
            self._finish_slots(finished.tolist(), ids, completed=True)
            done.append((now, ids))
        self.now = t
        return done

    def cancel(self, msg_ids: Iterable[int]) -> dict[int, float]:
        """Drop pending messages at ``now``; return id -> bytes already transmitted.

        Unknown or finished ids are ignored. An in-flight message's share is freed at once and the
        next message of its connection starts.
        """
        out: dict[int, float] = {}
        msg_ids = list(msg_ids)
        # bytes sent by every flow in flight now, in one vectorized pass (elementwise, so the
        # same floats as one slot at a time); a slot that a cancel below hands to the next
        # message of its connection is recomputed
        heads = [m for m in msg_ids if m in self._msgs and self._msgs[m][_SLOT] >= 0]
        head_slots = [self._msgs[m][_SLOT] for m in heads]
        sent_now: dict[int, float] = {}
        if heads:
            sent = self._transmitted(np.array(head_slots, dtype=np.int64)).tolist()
            sent_now = dict(zip(heads, sent, strict=True))
        reloaded: set[int] = set()
        for msg_id in msg_ids:
            msg = self._msgs.get(msg_id)
            if msg is None:
                continue
            src, dst, _, slot, _ = msg
            if slot < 0:  # queued behind the head: its connection stays busy
                self._conns[src][dst].remove(msg_id)
                del self._msgs[msg_id]
                out[msg_id] = 0.0
            else:
                if slot in reloaded or msg_id not in sent_now:
                    sent = float(self._transmitted(np.array([slot]))[0])
                else:
                    sent = sent_now[msg_id]
                reloaded.add(slot)
                self._done_sent[src] += sent
                self._done_recv[dst] += sent
                if self._tracks:
                    self._acked[src, dst] += sent
                out[msg_id] = sent
                self._finish_slots([slot], [msg_id], completed=False)
        return out

    def committed(self, src: int) -> set[int]:
        """Pending messages of ``src`` already handed to the transport (``send_buffer``), which a
        flush must leave to finish; empty without a send buffer."""
        buffer, conns = self.send_buffer, self._conns.get(src)
        if buffer is None or not conns:
            return set()
        msgs = self._msgs
        queues = list(conns.values())
        # every busy connection's head transmits: its bytes left, in one vectorized pass
        heads = np.array([msgs[queue[0]][_SLOT] for queue in queues], dtype=np.int64)
        left = self._remaining(heads).tolist()
        out: set[int] = set()
        tune = buffer.autotune
        for dst, queue, head_left in zip(conns, queues, left, strict=True):
            sizes = [msgs[m][_NBYTES] for m in queue]
            kernel = None
            if tune is not None:
                acked = self._acked[src, dst] + (sizes[0] - head_left)
                kernel = tune.kernel_bytes(acked, self.path_segments(src, dst))
            out.update(queue[: buffer.committed(head_left, sizes, kernel)])
        return out

    def path_segments(self, src: int, dst: int) -> float:
        """What the path from ``src`` to ``dst`` holds for one connection, in segments of the
        autotuned buffer's MSS: at the bottleneck (the uplink or downlink whose capacity is
        the smallest per connection it carries), its bandwidth-delay product (round trip: twice
        the latency) plus its queue, divided among the connections the node has opened on that
        side so far (inf if both are uncapped). Shared links are not counted."""
        buffer = self.send_buffer
        if buffer is None or buffer.autotune is None:
            raise ValueError("path_segments needs an autotuned send buffer")
        mss, rtt = buffer.autotune.mss, 2.0 * self.latency(src, dst)
        best = (math.inf, math.inf)
        for cap, k in (
            (self._cap_list[src], self._opened_out[src]),
            (self._cap_list[self.n + dst], self._opened_in[dst]),
        ):
            if math.isfinite(cap):
                k = max(k, 1)
                best = min(best, (cap / k, (cap * rtt / mss + buffer.queue_packets) / k))
        return best[1]

    def _open(self, src: int, dsts: Sequence[int]) -> None:
        """Count the connections ``src`` opens to ``dsts`` that it never had (autotune)."""
        acked = self._acked
        for dst in dsts:
            if (src, dst) not in acked:
                acked[src, dst] = 0.0
                self._opened_out[src] += 1
                self._opened_in[dst] += 1

    def set_capacities(
        self, up_Bps: np.ndarray, down_Bps: np.ndarray, *, rerate: bool = True
    ) -> None:
        """Change the nodes' capacities at ``now`` (time-varying traces, sim/dynamics.py).

        Transmitting flows keep the bytes they sent under their old rates: the next recomputation
        re-bases each at ``now`` and gives it its share of the new capacities, so a flow with R
        bytes left finishes R / new rate later. In bounded mode (``rate_update_s`` > 0) that is
        the next update, as for any other change. ``rerate=False`` only sets the numbers (a
        resumed run restoring the capacities its saved flows were rated with).
        """
        up = np.array(up_Bps, dtype=np.float64)
        down = np.array(down_Bps, dtype=np.float64)
        if up.shape != (self.n,) or down.shape != (self.n,):
            raise ValueError(f"capacities must be ({self.n},), got {up.shape}, {down.shape}")
        if not (np.all(up > 0) and np.all(down > 0)):
            raise ValueError("capacities must be > 0 (inf allowed)")
        self._caps[: self.n] = up
        self._caps[self.n : 2 * self.n] = down
        self._cap_list = self._caps.tolist()
        self._filling = self._new_filling()
        if rerate and self._msgs:
            self._dirty = True

    # -- checkpoints -----------------------------------------------------------------------------

    _SLOT_ARRAYS = ("_slot_msg", "_src", "_dst", "_size", "_rem", "_ref", "_rate", "_finish")

    def state_dict(self) -> dict:
        """Everything that changes as messages come and go (capacities, latencies and routes are
        rebuilt from the config): pending messages and connections in their order, the flow
        slots as they are (so the same slots are reused), byte counters, the rate-update clock."""
        msgs = list(self._msgs.items())
        return {
            "n": self.n,
            "resources": len(self._cap_list),
            "now": self.now,
            "msg_id": np.array([m for m, _ in msgs], dtype=np.int64),
            "msg": np.array([v for _, v in msgs], dtype=np.int64).reshape(len(msgs), 5),
            "conns": [[src, list(conns.items())] for src, conns in self._conns.items()],
            "enqueued": self._enqueued,
            "done_sent": np.array(self._done_sent, dtype=np.float64),
            "done_recv": np.array(self._done_recv, dtype=np.float64),
            **{name: getattr(self, name).copy() for name in self._SLOT_ARRAYS},
            "start_seq": self._start_seq.copy(),
            "slot_res": [list(r) for r in self._slot_res],
            "free": list(self._free),
            "first": self._first,
            "seq": self._seq,
            "dirty": self._dirty,
            "last_update": self._last_update,
            "used": np.array(self._used, dtype=np.float64),
            "recomputations": self.recomputations,
            "send_buffer": _buffer_state(self.send_buffer),
            # autotune: bytes each connection has transmitted, in the order they were opened
            "acked_pairs": np.array(list(self._acked), dtype=np.int64).reshape(-1, 2),
            "acked_bytes": np.array(list(self._acked.values()), dtype=np.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["resources"] != len(self._cap_list):
            raise ValueError(
                f"network state of {state['n']} nodes and {state['resources']} resources does "
                f"not fit this network ({self.n} nodes, {len(self._cap_list)} resources)"
            )
        # checkpoints made before the model have no entry (their config is checked elsewhere)
        buffer = state.get("send_buffer", _buffer_state(self.send_buffer))
        if buffer != _buffer_state(self.send_buffer):
            raise ValueError(
                f"network state with send buffer {buffer} does not fit this network "
                f"({_buffer_state(self.send_buffer)})"
            )
        slots = len(state["_slot_msg"])
        if any(len(state[k]) != slots for k in (*self._SLOT_ARRAYS, "start_seq", "slot_res")):
            raise ValueError("network flow slots of different lengths")
        self.now = float(state["now"])
        ids, rows = state["msg_id"].tolist(), state["msg"].tolist()
        self._msgs = dict(zip(ids, rows, strict=True))
        self._conns = {
            int(src): {int(dst): [int(m) for m in queue] for dst, queue in conns}
            for src, conns in state["conns"]
        }
        self._enqueued = int(state["enqueued"])
        self._done_sent = state["done_sent"].tolist()
        self._done_recv = state["done_recv"].tolist()
        for name in self._SLOT_ARRAYS:
            setattr(self, name, state[name])
        self._start_seq = state["start_seq"]
        self._slot_res = [tuple(int(r) for r in res) for res in state["slot_res"]]
        self._free = [int(s) for s in state["free"]]
        self._first = None if state["first"] is None else float(state["first"])
        self._seq = int(state["seq"])
        self._dirty = bool(state["dirty"])
        self._last_update = float(state["last_update"])
        self._used = state["used"].tolist()
        self.recomputations = int(state["recomputations"])
        self._acked, self._opened_out, self._opened_in = {}, [0] * self.n, [0] * self.n
        if self._tracks:
            pairs = state.get("acked_pairs", np.zeros((0, 2), dtype=np.int64)).tolist()
            sents = state.get("acked_bytes", np.zeros(0)).tolist()
            for (src, dst), sent in zip(pairs, sents, strict=True):
                self._open(src, (dst,))
                self._acked[src, dst] = sent
        if self._filling is not None:
            self._filling.forget()

    # -- internals -------------------------------------------------------------------------------

    def _new_filling(self) -> IncrementalFilling | None:
        """The incremental max-min filling where it applies: no shared links, finite caps."""
        if self._n_links or not np.all(np.isfinite(self._caps)):
            return None
        return IncrementalFilling(self._caps)

    def _active_slots(self) -> np.ndarray:
        return np.flatnonzero(self._slot_msg >= 0)

    def _remaining(self, slots: np.ndarray) -> np.ndarray:
        """Bytes left at ``now`` (0 for flows with infinite rate)."""
        rate = self._rate[slots]
        with np.errstate(invalid="ignore"):
            left = self._rem[slots] - rate * (self.now - self._ref[slots])
        left = np.where(np.isinf(rate), 0.0, left)
        return np.clip(left, 0.0, self._size[slots])

    def _transmitted(self, slots: np.ndarray) -> np.ndarray:
        return self._size[slots] - self._remaining(slots)

    def _set_finish(self, slots: np.ndarray) -> None:
        rate, rem, ref = self._rate[slots], self._rem[slots], self._ref[slots]
        with np.errstate(divide="ignore", invalid="ignore"):
            finish = np.where(rate > 0, ref + rem / rate, np.inf)
        # empty messages and infinite rates finish at once
        self._finish[slots] = np.where((rem <= 0) | np.isinf(rate), ref, finish)
        self._first = None

    def _route(self, src: int, dst: int) -> tuple[int, ...]:
        if self._route_fn is None:
            return ()  # no shared links: nothing to look up or cache
        key = (src, dst)
        if key not in self._routes:
            links = tuple(int(k) for k in self._route_fn(src, dst)) if self._route_fn else ()
            if any(not 0 <= k < self._n_links for k in links):
                raise ValueError(f"route({src}, {dst}) = {links} names a link out of range")
            self._routes[key] = links
        return self._routes[key]

    def _first_finish(self) -> float:
        """The earliest finishing time of any flow, rescanned only when it may have gone up."""
        if self._first is None:
            # the ufunc itself: ndarray.min adds a Python-level wrapper call per query
            self._first = float(np.minimum.reduce(self._finish)) if len(self._finish) else math.inf
        return self._first

    def _take_slots(self, k: int) -> list[int]:
        """``k`` free slots, in the order ``k`` single pops would hand them out."""
        free = self._free
        slots: list[int] = []
        while len(slots) < k:
            if not free:
                self._grow()
            take = min(k - len(slots), len(free))
            chunk = free[len(free) - take :]
            del free[len(free) - take :]
            chunk.reverse()
            slots += chunk
        return slots

    def _start_many(self, src: int, starts: list[tuple[int, int, _Msg]]) -> None:
        """Connections of ``src`` become busy: new flows, so the allocation changes.

        Per flow this is scalar bookkeeping in Python floats (in bounded mode, each new flow takes
        what is left on its path after the flows started before it, in order); the flow arrays
        are then written once for the whole batch.
        """
        slots = self._take_slots(len(starts))
        n, now = self.n, self.now
        bounded = self.rate_update_s > 0
        caps, used = self._cap_list, self._used
        slot_res = self._slot_res
        routed = self._route_fn is not None
        inf = math.inf
        ids, dsts, sizes, rates, finishes = [], [], [], [], []
        for slot, (msg_id, dst, msg) in zip(slots, starts, strict=True):
            msg[_SLOT] = slot
            route = self._route(src, dst) if routed else ()
            down = n + dst
            res = (src, down, *(2 * n + k for k in route)) if route else (src, down)
            slot_res[slot] = res
            size = float(msg[_NBYTES])
            rate = 0.0
            if bounded:
                # max(min(caps[r] - used[r] for r in res), 0.0), spelled out: the same IEEE
                # operations, in the same order, and the same choice among ties
                rate = caps[src] - used[src]
                left = caps[down] - used[down]
                if left < rate:
                    rate = left
                for r in res[2:]:
                    left = caps[r] - used[r]
                    if left < rate:
                        rate = left
                if rate < 0.0:
                    rate = 0.0
                if rate < inf:
                    used[src] += rate
                    used[down] += rate
                    for r in res[2:]:
                        used[r] += rate
            ids.append(msg_id)
            dsts.append(dst)
            sizes.append(size)
            rates.append(rate)
            finishes.append(_finish_time(now, size, rate))
        idx = np.array(slots, dtype=np.int64)
        self._slot_msg[idx] = ids
        self._src[idx] = src
        self._dst[idx] = dsts
        self._size[idx] = sizes
        self._rem[idx] = sizes
        self._ref[idx] = now
        self._start_seq[idx] = np.arange(self._seq, self._seq + len(slots))
        self._seq += len(slots)
        self._rate[idx] = rates
        self._finish[idx] = finishes
        if self._first is not None:  # the slots were free (finish = inf): only new minima count
            self._first = min(self._first, min(finishes))
        self._dirty = True

    def _finish_slots(self, slots: list[int], msg_ids: list[int], *, completed: bool) -> None:
        """Remove the head message in each slot, in order, and start the next of its connection.

        ``completed``: the messages finished, so their full sizes are booked (node counters then
        add up to exactly the message sizes); a cancelled message's partial bytes are booked by
        the caller. The allocation depends only on which connections transmit, so when a
        connection has a next message it takes over the slot and the rate unchanged: no
        recomputation needed.
        """
        msgs, all_conns = self._msgs, self._conns
        done_sent, done_recv = self._done_sent, self._done_recv
        bounded = self.rate_update_s > 0
        used, slot_res = self._used, self._slot_res
        now = self.now
        freed: list[int] = []
        for slot, msg_id, rate in zip(slots, msg_ids, self._rate[slots].tolist(), strict=True):
            src, dst, nbytes, _, _ = msgs.pop(msg_id)
            if completed:
                size = float(nbytes)  # == _size[slot]
                done_sent[src] += size
                done_recv[dst] += size
                if self._tracks:
                    self._acked[src, dst] += size
            conns = all_conns[src]
            queue = conns[dst]
            del queue[0]
            if queue:
                self._reload(slot, queue[0], rate, now)
                continue
            del conns[dst]
            freed.append(slot)
            if bounded and math.isfinite(rate):  # the freed share idles until the next update
                res = slot_res[slot]
                used[src] -= rate  # res[0]
                used[res[1]] -= rate
                for r in res[2:]:
                    used[r] -= rate
        if freed:
            self._slot_msg[freed] = -1
            self._finish[freed] = np.inf
            self._rate[freed] = 0.0
            self._free += freed
            self._dirty = True
        self._first = None  # finish times were raised or removed: rescan at the next query

    def _reload(self, slot: int, msg_id: int, rate: float, now: float) -> None:
        """The next message of a connection takes over its flow's slot and rate, starting now."""
        msg = self._msgs[msg_id]
        msg[_SLOT] = slot
        size = float(msg[_NBYTES])
        self._slot_msg[slot] = msg_id
        self._size[slot] = size
        self._rem[slot] = size
        self._ref[slot] = now
        self._start_seq[slot] = self._seq
        self._seq += 1
        self._finish[slot] = _finish_time(now, size, rate)

    def _grow(self) -> None:
        old = len(self._slot_msg)
        new = max(64, 2 * old)
        pad = new - old

        def ext(a: np.ndarray, fill: float) -> np.ndarray:
            return np.concatenate([a, np.full(pad, fill, dtype=a.dtype)])

        self._slot_msg = ext(self._slot_msg, -1)
        self._src, self._dst = ext(self._src, 0), ext(self._dst, 0)
        self._size, self._rem, self._ref = ext(self._size, 0), ext(self._rem, 0), ext(self._ref, 0)
        self._rate, self._finish = ext(self._rate, 0), ext(self._finish, np.inf)
        self._start_seq = ext(self._start_seq, 0)
        self._slot_res.extend([()] * pad)
        self._free.extend(range(new - 1, old - 1, -1))  # pop() hands out low slots first

    def _next_update(self) -> float:
        """When a pending bounded-rate update is due (inf when exact or nothing changed)."""
        if self.rate_update_s <= 0 or not self._dirty:
            return math.inf
        return max(self._last_update + self.rate_update_s, self.now)

    def _entries(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The flow-resource incidence of ``slots`` (flows numbered 0..len-1): uplinks,
        downlinks, then shared links."""
        flows = np.arange(len(slots))
        entry_flow = [flows, flows]
        entry_res = [self._src[slots], self.n + self._dst[slots]]
        if self._n_links:
            links = [self._slot_res[s][2:] for s in slots]  # shared links, already 2n + k
            lengths = np.array([len(r) for r in links], dtype=np.int64)
            entry_flow.append(np.repeat(flows, lengths))
            entry_res.append(
                np.fromiter((k for r in links for k in r), dtype=np.int64, count=int(lengths.sum()))
            )
        return np.concatenate(entry_flow), np.concatenate(entry_res)

    def _refresh(self) -> None:
        """Recompute the max-min allocation if the set of flows changed (and an update is due)."""
        if not self._dirty:
            return
        if self.rate_update_s > 0 and self.now < self._last_update + self.rate_update_s:
            return  # bounded mode: provisional rates hold until the next update
        self._dirty = False
        self._last_update = self.now
        slots = self._active_slots()
        self._used = [0.0] * len(self._cap_list)
        if len(slots) == 0:
            return
        self.recomputations += 1
        # re-base every flow at now under its old rate, then give it its new rate
        self._rem[slots] = self._remaining(slots)
        self._ref[slots] = self.now
        if self._filling is not None:
            rates = self._filling.rates(self._src[slots], self._dst[slots])
        else:
            e_flow, e_res = self._entries(slots)
            rates = max_min_rates(self._caps, e_flow, e_res, len(slots))
        self._rate[slots] = rates
        self._set_finish(slots)
        if self.rate_update_s > 0:
            e_flow, e_res = self._entries(slots)
            w = rates[e_flow]
            fin = np.isfinite(w)
            used = np.bincount(e_res[fin], weights=w[fin], minlength=len(self._caps))
            self._used = used.tolist()
