"""Pending messages, and their payloads moved to a temporary file beyond a memory budget.

A sender whose link is slower than its sends builds a backlog, and without a flush (Swift,
AD-PSGD's replies) every queued message holds its own snapshot of the model until it is
delivered. At the DivShare artifact's MovieLens scale a Swift run queues ~1,000 snapshots of
827 KB per node, most of which are still queued when the run ends: 24 GB and more in memory.
So once the messages pending in the flow model exceed ``budget`` bytes (as sent), the payloads
of further sends are pickled into an unlinked temporary file and read back when the message is
delivered. Pickling round-trips every array exactly, so a run gives the same bits whatever the
budget; what changes is memory against disk (the file grows by every spilled payload and goes
away with the run: ``TMPDIR`` decides where it lives). Before the file takes the disk's last
``reserve`` bytes the run stops with ``SpillError``, so that a run too large for the machine fails
with a clear message instead of filling the disk under everything else that uses it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any

from peerlearn.sim.errors import SpillError

#: payloads smaller than this stay in memory: writing them costs more than they hold
MIN_SPILL_BYTES = 64 * 1024
#: free disk space is looked up again after this many bytes written
CHECK_EVERY_BYTES = 256 * 2**20


def default_reserve(total_bytes: int) -> int:
    """Free space the spill file leaves alone: 5 % of the file system, at least 1 GiB."""
    return max(2**30, total_bytes // 20)


@dataclass(frozen=True, slots=True)
class SpilledPayload:
    """Where a payload lies in the spill file; stands in for it in a pending ``Message``."""

    offset: int
    length: int
    nbytes: int  # the payload's size on the wire, for anything that asks


class PendingMessages(dict):
    """``msg_id -> (Message, (nbytes, data bytes, meta bytes))`` that keeps the sum of nbytes.

    Only item assignment, ``pop`` and ``del`` change it (the engine uses nothing else).
    """

    __slots__ = ("nbytes",)

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __setitem__(self, msg_id: int, entry: tuple) -> None:
        old = self.get(msg_id)
        if old is not None:
            self.nbytes -= old[1][0]
        super().__setitem__(msg_id, entry)
        self.nbytes += entry[1][0]

    def pop(self, msg_id: int, *default: Any) -> Any:
        if default and msg_id not in self:
            return default[0]
        entry = super().pop(msg_id)
        self.nbytes -= entry[1][0]
        return entry

    def __delitem__(self, msg_id: int) -> None:
        self.nbytes -= self[msg_id][1][0]
        super().__delitem__(msg_id)


class PayloadSpill:
    """Writes payloads to an unlinked temporary file and reads them back (``budget`` in bytes)."""

    def __init__(self, budget: float, reserve: int | None = None) -> None:
        self._fd: int | None = None
        if not budget >= 0:  # also rejects nan
            raise ValueError(f"spill budget must be >= 0 bytes, got {budget}")
        self.budget = budget
        self.reserve = reserve  # None: default_reserve of the file's file system
        self._room = 0  # bytes that may still be written before free space is looked up again
        self._end = 0  # the file's length: the next payload goes there
        self.payloads = 0  # payloads written
        self.bytes_written = 0
        self.reads = 0

    def over_budget(self, pending_bytes: int) -> bool:
        return pending_bytes > self.budget

    def put(self, payload: Any) -> SpilledPayload:
        """Write ``payload`` at the end of the file; what to keep in its place."""
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        if self._fd is None:
            with tempfile.TemporaryFile(prefix="peerlearn-spill-") as f:
                self._fd = os.dup(f.fileno())  # unlinked already: gone once this fd closes
        if len(data) > self._room:
            self._check_space(len(data))
        self._room -= len(data)
        offset = self._end
        view = memoryview(data)
        try:
            while view:  # pwrite may write less than asked
                view = view[os.pwrite(self._fd, view, offset + len(data) - len(view)) :]
        except OSError as exc:  # the disk filled up under us (other writers)
            raise SpillError(f"writing the simulator's spill file: {exc}") from exc
        self._end += len(data)
        self.payloads += 1
        self.bytes_written += len(data)
        return SpilledPayload(offset, len(data), int(payload.nbytes))

    def _check_space(self, need: int) -> None:
        assert self._fd is not None
        st = os.fstatvfs(self._fd)
        free = st.f_bavail * st.f_frsize
        reserve = (
            self.reserve if self.reserve is not None else default_reserve(st.f_blocks * st.f_frsize)
        )
        room = free - reserve
        if need > room:
            raise SpillError(
                f"the simulator's queued messages need more disk than {tempfile.gettempdir()} "
                f"has: {self.bytes_written / 1e9:.1f} GB spilled so far, "
                f"{free / 1e9:.1f} GB free, {reserve / 1e9:.1f} GB kept free; set TMPDIR to a "
                "larger disk, raise compute.spill_after_mb on a machine with more memory, or "
                "shorten the run (a sender that never drops queues every model it cannot send)"
            )
        self._room = min(room, CHECK_EVERY_BYTES)

    def get(self, spilled: SpilledPayload) -> Any:
        """The payload written as ``spilled`` (a fresh object at each call)."""
        if self._fd is None:
            raise RuntimeError("nothing has been spilled")
        chunks = []
        offset, left = spilled.offset, spilled.length
        while left:
            chunk = os.pread(self._fd, left, offset)
            if not chunk:
                raise OSError(f"spill file ends before byte {offset + left}")
            chunks.append(chunk)
            offset += len(chunk)
            left -= len(chunk)
        self.reads += 1
        return pickle.loads(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def spill_burst(self, messages: list) -> None:
        """Replace the payloads of a burst of ``Message`` objects by ``SpilledPayload``s.

        A payload shared by several messages (one snapshot sent to r peers) is written once.
        Payloads under ``MIN_SPILL_BYTES`` stay where they are.
        """
        # id -> (payload, where): holding the payload keeps its id from being reused meanwhile
        written: dict[int, tuple[Any, SpilledPayload]] = {}
        for msg in messages:
            payload = msg.payload
            if type(payload) is SpilledPayload or payload.nbytes < MIN_SPILL_BYTES:
                continue
            entry = written.get(id(payload))
            if entry is None:
                entry = written[id(payload)] = (payload, self.put(payload))
            msg.payload = entry[1]

    def summary(self) -> dict | None:
        """What was spilled (for summary.json), or None when nothing was."""
        if not self.payloads:
            return None
        return {
            "payloads": self.payloads,
            "mb_written": round(self.bytes_written / 1e6, 3),
            "reads": self.reads,
            "budget_mb": self.budget / 1e6,
        }

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()
