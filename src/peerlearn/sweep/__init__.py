"""Sweeps: many runs (configs x algorithms x seeds), resumable, on local processes or Ray."""

from peerlearn.sweep.driver import SweepOutcome, aggregate, run_sweep
from peerlearn.sweep.spec import RunSpec, SweepSpec, compare_sweep, load_sweep, parse_seeds

__all__ = [
    "RunSpec",
    "SweepOutcome",
    "SweepSpec",
    "aggregate",
    "compare_sweep",
    "load_sweep",
    "parse_seeds",
    "run_sweep",
]
