"""Errors of the simulator's command-line paths, importable without torch (the CLI catches them)."""


class SpillError(Exception):
    """The simulator's spill file would take the disk's reserved free space (sim/spill.py)."""


class CheckpointError(Exception):
    """A checkpoint that cannot be written, found or trusted; phrased for the user (one line)."""
