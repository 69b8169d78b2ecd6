"""Checkpoints of simulated runs: written atomically, verified before they are trusted.

A run directory's ``checkpoint/`` folder holds::

    state-000007.npz   every array of the state, plus the state tree as JSON (key "__tree__")
    manifest.json      written last: format version, config digest, the state file's size and
                       SHA-256, the virtual time

A state file is written to a temporary name, fsynced and renamed; only then is the manifest
(pointing at it) written the same way, and older state files removed. A crash at any moment leaves
either the previous checkpoint or the new one, complete, behind its manifest. Reading checks the
format version, the resolved config's digest, the size and checksum before anything is decoded;
``np.load`` runs with ``allow_pickle=False``. See docs/checkpoint.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peerlearn import __version__
from peerlearn.config import ExperimentConfig, dump_config
from peerlearn.results.atomic import write_atomic
from peerlearn.sim import state as state_tree
from peerlearn.sim.errors import CheckpointError

__all__ = ["CheckpointError", "Checkpointer", "Every", "parse_every", "read_checkpoint"]

#: bumped whenever what a checkpoint holds, or how, changes; other versions are refused
FORMAT_VERSION = 1
FORMAT_NAME = "peerlearn-checkpoint"
CHECKPOINT_DIR = "checkpoint"
MANIFEST = "manifest.json"
_TREE_KEY = "__tree__"
_STATE_NAME = re.compile(r"state-(\d{6})\.npz")


# -- when to checkpoint --------------------------------------------------------------------------

_EVERY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(s|m|h|vs)")
_WALL_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Every:
    """A checkpoint interval: ``seconds`` of wall-clock time, or of virtual time (``virtual``)."""

    seconds: float
    virtual: bool
    text: str


def parse_every(text: str) -> Every:
    """``30s``, ``10m``, ``1h`` (wall-clock time) or ``50vs`` (virtual seconds)."""
    m = _EVERY.fullmatch(text.strip())
    value = float(m.group(1)) if m else 0.0
    if not m or not math.isfinite(value) or value <= 0:
        raise CheckpointError(
            f"--checkpoint-every {text!r}: expected a positive number and a unit: s, m, h "
            "(wall-clock time, e.g. 10m) or vs (virtual seconds, e.g. 50vs)"
        )
    unit = m.group(2)
    if unit == "vs":
        return Every(value, True, text.strip())
    return Every(value * _WALL_UNITS[unit], False, text.strip())


def config_digest(cfg: ExperimentConfig) -> str:
    """SHA-256 of the resolved config (the TOML written to the run directory)."""
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()


# -- writing ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(
    run_dir: Path, state: dict[str, Any], *, config_sha256: str, sequence: int, extra: dict
) -> dict[str, Any]:
    """Write ``state`` (a state tree) as checkpoint number ``sequence``; returns the manifest."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tree, arrays = state_tree.encode(state)
    text = json.dumps(tree, allow_nan=False, separators=(",", ":")).encode()
    arrays[_TREE_KEY] = np.frombuffer(text, dtype=np.uint8)
    name = f"state-{sequence:06d}.npz"
    path = folder / name
    write_atomic(path, lambda f: np.savez(f, allow_pickle=False, **arrays), durable=True)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "peerlearn_version": __version__,
        "config_sha256": config_sha256,
        "sequence": sequence,
        "state_file": name,
        "state_bytes": path.stat().st_size,
        "state_sha256": _sha256(path),
        **extra,
    }
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    write_atomic(folder / MANIFEST, body, durable=True)
    for old in folder.iterdir():  # only now is the previous checkpoint no longer needed
        if old.name != name and (_STATE_NAME.fullmatch(old.name) or old.name.endswith(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return manifest


# -- reading ---------------------------------------------------------------------------------------


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of ``run_dir``'s checkpoint, its format checked (not yet its state)."""
    path = Path(run_dir) / CHECKPOINT_DIR / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint in {run_dir} (no {CHECKPOINT_DIR}/{MANIFEST}; a run writes one "
            "with --checkpoint-every)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint manifest {path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a peerlearn checkpoint manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint in {run_dir} has format version {version!r} (written by peerlearn "
            f"{manifest.get('peerlearn_version', '?')}); this peerlearn reads version "
            f"{FORMAT_VERSION} only"
        )
    return manifest


def read_checkpoint(run_dir: Path, cfg: ExperimentConfig) -> tuple[dict[str, Any], Any]:
    """(manifest, state tree) of ``run_dir``'s checkpoint, after every check passed."""
    manifest = read_manifest(run_dir)
    if manifest.get("config_sha256") != config_digest(cfg):
        raise CheckpointError(
            f"checkpoint in {run_dir} was written for a different config (resolved config "
            "digest differs); refusing to resume it under this one"
        )
    name = manifest.get("state_file")
    if not isinstance(name, str) or not _STATE_NAME.fullmatch(name):
        raise CheckpointError(f"checkpoint manifest in {run_dir} names no valid state file")
    path = Path(run_dir) / CHECKPOINT_DIR / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint state {path} is missing")
    size = path.stat().st_size
    if size != manifest.get("state_bytes") or _sha256(path) != manifest.get("state_sha256"):
        raise CheckpointError(
            f"checkpoint state {path} is corrupt or truncated ({size} bytes, checksum does not "
            "match the manifest); refusing it"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tree = json.loads(arrays.pop(_TREE_KEY).tobytes())
        state = state_tree.decode(tree, arrays)
    except Exception as exc:  # a file that matched its checksum yet does not parse
        raise CheckpointError(f"checkpoint state {path} cannot be read: {exc}") from None
    return manifest, state


# -- the hook the simulator calls ----------------------------------------------------------------


class Checkpointer:
    """Saves the simulator's state into ``run_dir`` every ``every`` (a ``CheckpointHook``)."""

    def __init__(
        self,
        run_dir: Path,
        cfg: ExperimentConfig,
        every: Every,
        *,
        sequence: int = 0,
        resumed_at: float | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config_sha256 = config_digest(cfg)
        self.every = every
        self.sequence = sequence
        self.count = 0
        self.failed = 0
        self.last_bytes = 0
        self.last_write_s = 0.0
        self.total_write_s = 0.0
        self._next_wall = time.perf_counter() + every.seconds
        start = resumed_at if resumed_at is not None else 0.0
        self._next_virtual = self._after(start) if resumed_at is not None else every.seconds

    def _after(self, t: float) -> float:
        """The first multiple of the interval after ``t``."""
        return self.every.seconds * (math.floor(t / self.every.seconds) + 1)

    def due(self, t_next: float) -> bool:
        if self.every.virtual:
            if t_next >= self._next_virtual:
                self._next_virtual = self._after(t_next)
                return True
            return False
        return time.perf_counter() >= self._next_wall

    def save(self, sim) -> None:
        """Write a checkpoint. One that cannot be written (disk full, ...) is skipped with a
        warning: the run goes on, the previous checkpoint stays valid, the next is tried later."""
        t0 = time.perf_counter()
        try:
            manifest = write_checkpoint(
                self.run_dir,
                sim.state_dict(),
                config_sha256=self.config_sha256,
                sequence=self.sequence + 1,
                extra={
                    "virtual_time_s": sim.now,
                    "next_event_s": sim.checkpoint_at,
                    "every": self.every.text,
                    "written_unix": time.time(),
                },
            )
        except OSError as exc:
            self.failed += 1
            warnings.warn(
                f"checkpoint {self.sequence + 1} not written to {self.run_dir}: {exc}; the run "
                "goes on and keeps the previous checkpoint",
                RuntimeWarning,
                stacklevel=2,
            )
            self._next_wall = time.perf_counter() + self.every.seconds
            return
        self.sequence += 1
        self.last_write_s = time.perf_counter() - t0
        self.total_write_s += self.last_write_s
        self.last_bytes = manifest["state_bytes"]
        self.count += 1
        self._next_wall = time.perf_counter() + self.every.seconds

    def stats(self) -> dict[str, Any]:
        return {
            "every": self.every.text,
            "written": self.count,
            "failed": self.failed,
            "last_bytes": self.last_bytes,
            "last_write_s": self.last_write_s,
            "total_write_s": self.total_write_s,
        }

    def remove(self) -> None:
        """Delete the checkpoint folder (the run finished and its results are written)."""
        folder = self.run_dir / CHECKPOINT_DIR
        if folder.is_dir():
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


def load_into(sim, state: Any, run_dir: Path) -> None:
    """``sim.load_state_dict(state)``, any mismatch reported as a ``CheckpointError``."""
    try:
        sim.load_state_dict(state)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit this run: {exc}") from None
