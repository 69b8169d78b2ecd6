"""A changing network in the simulator: capacity traces and churn (docs/dynamics.md).

``network.schedule.build_schedule`` turns ``[dynamics]`` and ``[churn]`` into one lazy stream of
changes in time order (capacity changes first on a tie); ``SimDynamics`` applies them to a
running ``Simulator``.
The engine keeps one ``_DYN`` event in its queue, at the time of the next change, so a run
without dynamics has no such event and runs exactly as before.

Churn semantics (the engine's side):

- a node going offline freezes: its queued events (end of training, timers, its start) are taken
  out of the queue and come back when it rejoins, as far after the rejoin as they were after the
  leave; its model and protocol state stay as they are (a rejoining node goes on from its own
  model);
- every message it is sending or receiving is lost: cancelled in the flow model (the bytes that
  already crossed the sender's uplink are counted as lost) or, if its last byte has left and it
  is still on the wire, never delivered;
- a message sent to an offline node is lost at once (a refused connection: no bytes sent).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from peerlearn.network.schedule import Change, build_schedule
from peerlearn.network.traces import CapacityChange

if TYPE_CHECKING:
    from peerlearn.experiment import Setup
    from peerlearn.sim.engine import Simulator

# the engine's event kinds (sim/engine.py): a node's own event, a batch of deliveries
_NODE, _DELIVER = 0, 1


class SimDynamics:
    """Applies the schedule to a simulator; counts what churn lost; saved in checkpoints."""

    def __init__(self, setup: Setup, schedule: Iterator[Change]) -> None:
        self.setup = setup
        self._schedule = schedule
        self.consumed = 0  # changes taken from the schedule (a resumed run skips as many)
        self._next: Change | None = next(schedule, None)
        n = setup.cfg.nodes
        self.up = np.array(setup.network.up_Bps, dtype=np.float64)
        self.down = np.array(setup.network.down_Bps, dtype=np.float64)
        self.factors = np.array(setup.compute_factors, dtype=np.float64)
        self.offline = [False] * n
        self.any_offline = False
        self.offline_since = [0.0] * n
        # per offline node, its frozen events: (delay after the leave, original key, item)
        self.stash: dict[int, list[tuple[float, int, Any]]] = {}
        self.messages_lost = 0
        self.bytes_lost = np.zeros(n)  # by sender: bytes that crossed its uplink, then were lost
        self.transitions = 0

    # -- the schedule --------------------------------------------------------------------------

    def next_time(self) -> float:
        return float("inf") if self._next is None else self._next.time_s

    def _take(self) -> Change:
        change = self._next
        assert change is not None
        self._next = next(self._schedule, None)
        self.consumed += 1
        return change

    def apply_initial(self, sim: Simulator) -> None:
        """Changes at time 0, before anything starts: the initial capacities and who is offline."""
        while self._next is not None and self._next.time_s <= 0.0:
            self._apply_one(sim, self._take(), initial=True)
        sim.net.set_capacities(self.up, self.down, rerate=False)

    def apply_due(self, sim: Simulator) -> None:
        """Every change due at ``sim.now``: capacities in one re-rating, then leaves and joins."""
        caps_changed = False
        while self._next is not None and self._next.time_s <= sim.now:
            caps_changed |= self._apply_one(sim, self._take(), initial=False)
        if caps_changed:
            sim.net.set_capacities(self.up, self.down)

    def _apply_one(self, sim: Simulator, change: Change, *, initial: bool) -> bool:
        """Apply one change; True if it changed a capacity (re-rated by the caller)."""
        if isinstance(change, CapacityChange):
            i = change.node
            if change.compute_factor is not None:
                self.factors[i] = change.compute_factor
            old = (self.up[i], self.down[i])
            if change.up_Bps is not None:
                self.up[i] = change.up_Bps
            if change.down_Bps is not None:
                self.down[i] = change.down_Bps
            return old != (self.up[i], self.down[i])
        node = change.node
        if change.online == (not self.offline[node]):
            return False  # already in that state
        self.transitions += 1
        if change.online:
            self._rejoin(sim, node)
        else:
            self._leave(sim, node, initial)
        self.any_offline = any(self.offline)
        return False

    # -- churn ---------------------------------------------------------------------------------

    def _leave(self, sim: Simulator, node: int, initial: bool) -> None:
        self.offline[node] = True
        self.offline_since[node] = sim.now
        if initial:  # nothing queued or sent yet; the start event is frozen when pushed
            return
        now = sim.now
        frozen = sim.queue.extract(lambda item: item[0] == _NODE and item[1] == node)
        self.stash[node] = [(t - now, seq, item) for t, seq, item in frozen]
        # messages still in the flow model, to or from the node
        messages = sim.messages
        ids = [m for m in sim.net.pending() if node in (messages[m][0].src, messages[m][0].dst)]
        for msg_id, sent in sim.net.cancel(ids).items():
            src = messages.pop(msg_id)[0].src
            self.bytes_lost[src] += sent
            self.messages_lost += 1
        # messages whose last byte has left but which are still on the wire to the node
        for _, ids in sim.queue.items_where(lambda item: item[0] == _DELIVER):
            lost = [m for m in ids if messages[m][0].dst == node]
            if lost:
                for m in lost:
                    msg, (nbytes, _, _) = messages.pop(m)
                    self.bytes_lost[msg.src] += nbytes
                    self.messages_lost += 1
                ids[:] = [m for m in ids if m in messages]

    def _rejoin(self, sim: Simulator, node: int) -> None:
        self.offline[node] = False
        for delay, _, item in self.stash.pop(node, []):
            sim.queue.push(sim.now + delay, item)

    def freeze(self, node: int, item: Any) -> None:
        """Keep an event of an offline node (its start) for its rejoin."""
        self.stash.setdefault(node, []).append((0.0, -1, item))

    def send_lost(self, dest: int) -> bool:
        """Whether a message sent now to ``dest`` is lost (counted)."""
        if self.offline[dest]:
            self.messages_lost += 1
            return True
        return False

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self, encode_item) -> dict:
        return {
            "consumed": self.consumed,
            "up": self.up.copy(),
            "down": self.down.copy(),
            "factors": self.factors.copy(),
            "offline": list(self.offline),
            "offline_since": list(self.offline_since),
            "stash": [
                [node, [[d, s, encode_item(it)] for d, s, it in items]]
                for node, items in self.stash.items()
            ],
            "messages_lost": self.messages_lost,
            "bytes_lost": self.bytes_lost.copy(),
            "transitions": self.transitions,
        }

    def load_state_dict(self, state: dict, sim: Simulator, decode_item) -> None:
        """Restore; the schedule is rebuilt by the caller and advanced past what was consumed."""
        consumed = int(state["consumed"])
        self._next = None
        self._schedule = itertools.islice(self._schedule_source(), consumed, None)
        self._next = next(self._schedule, None)
        self.consumed = consumed
        self.up[:] = state["up"]
        self.down[:] = state["down"]
        self.factors[:] = state["factors"]
        sim.net.set_capacities(self.up, self.down, rerate=False)
        self.offline = [bool(v) for v in state["offline"]]
        self.any_offline = any(self.offline)
        self.offline_since = [float(v) for v in state["offline_since"]]
        self.stash = {
            int(node): [(float(d), int(s), decode_item(it)) for d, s, it in items]
            for node, items in state["stash"]
        }
        self.messages_lost = int(state["messages_lost"])
        self.bytes_lost[:] = state["bytes_lost"]
        self.transitions = int(state["transitions"])

    def _schedule_source(self) -> Iterator[Change]:
        schedule = build_schedule(self.setup)
        assert schedule is not None
        return schedule
