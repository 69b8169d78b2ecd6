"""What a finished run measured: the numbers ``summary.json`` is built from, for every engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ByteCounters:
    """Per-node byte totals of delivered and cancelled messages (bytes sent are counted apart)."""

    n: int
    delivered: np.ndarray = field(init=False)
    wasted: np.ndarray = field(init=False)
    data: np.ndarray = field(init=False)
    meta: np.ndarray = field(init=False)
    received: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for name in ("delivered", "wasted", "data", "meta", "received"):
            setattr(self, name, np.zeros(self.n))


@dataclass
class RunResult:
    """What one run measured, whichever engine ran it (``build_summary`` reads it).

    A deployed run fills the time fields with wall-clock seconds since the common start.
    """

    virtual_time_s: float
    wall_time_s: float
    train_wall_s: float
    eval_wall_s: float
    iterations: np.ndarray
    bytes_sent: np.ndarray
    counters: ByteCounters
    messages_delivered: int
    messages_dropped: int
    train_batches: int
    train_jobs: int
    finished_all: bool
    #: one row per delivered message (results/messages.py), when eval.log_messages is set
    message_log: list | None = None
    #: intra-op threads the simulator's training and evaluation used (compute.threads); None:
    #: not chosen by the engine (a deployed run)
    threads: int | None = None
    #: model rows the evaluator ran forward (identical models are evaluated once)
    eval_models: int | None = None
    #: capacity traces and churn (docs/dynamics.md): messages and bytes lost to churn; None when
    #: the run had no dynamics
    churn: dict | None = None
    #: payloads of queued messages the simulator kept in a file (sim/spill.py); None: none
    spill: dict | None = None
