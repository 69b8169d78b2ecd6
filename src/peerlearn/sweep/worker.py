"""One run of a sweep, executed where the executor puts it (a local process, a Ray worker).

The worker writes nothing: it returns the summary and the metric rows, and the driver writes
the run directory, so remote workers need no shared filesystem. Torch is imported here, after
the thread settings, never at module import, so a fresh worker process starts with them.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any


def limit_threads(threads: int) -> None:
    """Keep N concurrent runs from oversubscribing the cores: ``threads`` intra-op threads each,
    and idle OpenMP threads that sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE; it only
    takes effect in a process that has not started OpenMP yet, as a fresh worker)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, int(threads)))


def execute_run(config_toml: str, threads: int) -> dict[str, Any]:
    """Simulate one resolved config; ``{"ok": True, summary, rows, messages}`` or
    ``{"ok": False, "error": traceback}`` (a failure is returned, never raised, so that any
    executor reports it the same way)."""
    t0 = time.perf_counter()
    try:
        limit_threads(threads)
        import tomllib

        from peerlearn.config.load import validate
        from peerlearn.experiment import build_setup
        from peerlearn.results.metrics import MetricsRecorder
        from peerlearn.results.summary import build_summary
        from peerlearn.sim.engine import Simulator

        cfg = validate(tomllib.loads(config_toml))
        recorder = MetricsRecorder()
        result = Simulator(build_setup(cfg), recorder, None).run()
        summary = build_summary(cfg=cfg, recorder=recorder, result=result)
        return {
            "ok": True,
            "summary": summary,
            "rows": recorder.rows,
            "messages": result.message_log,
            "worker_wall_s": time.perf_counter() - t0,
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }
    except Exception:
        return {"ok": False, "error": traceback.format_exc(), "host": os.uname().nodename}
