"""Node processes die with the launcher that started them, however it dies.

Three layers, because each one alone has a gap:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel sends the child a signal when its parent dies, even
  of SIGKILL. The launcher sets it in the child between fork and exec (``preexec``), then the
  child re-checks its parent pid: a launcher that died in between would otherwise never send it.
  The signal is SIGTERM: during set-up its default action ends the process at once; once the
  nodes run, the event loop handles it and they stop cleanly, with stop reason ``orphaned``.
- a watchdog thread in the node process (``ParentWatch``), started before torch is imported,
  that polls ``--parent-pid``: it also covers other systems, processes started by hand with
  ``--parent-pid``, and a process that ignored the signal. During set-up it exits at once
  (nothing is measured yet); while the nodes run it asks them to stop, and exits anyway after a
  grace period.
- the launcher puts every node process in one process group and kills the group on every way
  out it can see (end of run, error, Ctrl-C, SIGTERM).

Only the standard library here: this module is imported before anything heavy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
#: exit status of a node process that found its launcher gone during set-up
ORPHANED_EXIT = 3


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# looked up once, in the parent: the child between fork and exec only calls it
_PRCTL = _load_prctl()


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if _PRCTL is None:
        return False
    return _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def preexec(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """For ``subprocess.Popen(preexec_fn=...)``: runs in the child after fork, before exec.

    The death signal survives exec (not of set-uid programs). If the parent died between fork
    and here, the signal will never come: the child is already someone else's and exits.
    """

    def _in_child() -> None:
        set_parent_death_signal(sig)
        if os.getppid() != parent_pid:
            os._exit(ORPHANED_EXIT)

    return _in_child


class ParentWatch:
    """Watch ``parent_pid`` from a daemon thread; act when this process is orphaned.

    Until ``on_orphan`` is set (the set-up phase: imports, data, model, warm-up) an orphan
    exits at once. Once it is set, it is called (from the watch thread; it must be thread-safe,
    e.g. ``loop.call_soon_threadsafe``) and the process exits anyway ``grace_s`` later.
    """

    def __init__(self, parent_pid: int, *, interval_s: float = 0.25, grace_s: float = 15.0):
        self.parent_pid = parent_pid
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.on_orphan: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._watch, name="parent-watch", daemon=True)

    def start(self) -> ParentWatch:
        # the kernel signal too, for processes not started by the launcher (a no-op repeat
        # for those that were); then the check that closes the race with the parent's death
        set_parent_death_signal(signal.SIGTERM)
        self._thread.start()
        return self

    def orphaned(self) -> bool:
        return os.getppid() != self.parent_pid

    def _watch(self) -> None:
        while not self.orphaned():
            time.sleep(self.interval_s)
        callback = self.on_orphan
        if callback is None:
            _exit_now(f"launcher (pid {self.parent_pid}) is gone during set-up; exiting")
        with contextlib.suppress(Exception):  # the loop may be closing: hard exit below
            callback()
        time.sleep(self.grace_s)
        _exit_now(f"launcher (pid {self.parent_pid}) is gone; nodes did not stop in time")


def _exit_now(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    finally:
        os._exit(ORPHANED_EXIT)
