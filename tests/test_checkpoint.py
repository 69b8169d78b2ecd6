"""Checkpoint and resume: a resumed run ends with the same metrics.csv, byte for byte.

Every algorithm: stopped twice at a checkpoint, resumed each time in a fresh simulator built from
the config on disk. Two algorithms: a real ``peerlearn run --checkpoint-every`` killed with
SIGKILL at a random moment, then ``peerlearn run --resume``. And what must be refused.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from peerlearn.cli import main
from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.config import dump_config, load_config
from peerlearn.experiment import build_setup
from peerlearn.sim import state as state_tree
from peerlearn.sim.checkpoint import (
    CHECKPOINT_DIR,
    MANIFEST,
    Checkpointer,
    CheckpointError,
    config_digest,
    load_into,
    parse_every,
    read_checkpoint,
)
from peerlearn.sim.engine import Simulator

ALGORITHMS = ["dpsgd", "divshare", "swift", "adpsgd", "jwins", "topk", "subsampling", "choco"]

# tiny digits runs with stragglers: queued and in-flight messages, pending jobs at checkpoints
TINY = [
    "name=tiny",
    "nodes=6",
    "data.dataset=digits",
    "data.partition=iid",
    "model.hidden=[8]",
    "train.local_steps=2",
    "topology.kind=regular",
    "topology.degree=3",
    "network.preset=stragglers",
    "network.stragglers=2",
    "network.fast_mbps=2",
    "stop.virtual_time_s=1.5",
    "eval.every_s=0.25",
    "eval.test_samples=200",
]
EXTRA = {
    "adpsgd": ["algorithm.variant=atomic"],
    "divshare": ["network.rate_update_s=0.01"],
    "swift": ["eval.log_messages=true"],
    # committed messages outlive flushes (sim/send_buffer.py)
    "divshare+buffer": ["network.send_buffer=600", "network.send_buffer_frames=1"],
    # every payload of 64 KB or more waits in the spill file (sim/spill.py): 76 KB models
    "swift+spill": ["model.hidden=[256]", "compute.spill_after_mb=0"],
    # the autotuned buffer grows with what each connection transmitted: that resumes too
    "divshare+autotune": ["network.send_buffer=autotune"],
    # the fair-comparison wire variants (docs/reproduction_jwins.md §8b): their payloads resume
    "dpsgd+fpzip": ["algorithm.float_codec=auto"],
    "choco+reference": ["algorithm.wire=reference"],
}


def tiny(algorithm: str, *extra: str):
    return load_config(
        None,
        [*TINY, f"algorithm.name={algorithm.split('+')[0]}", *EXTRA.get(algorithm, []), *extra],
    )


class _Stop(Exception):
    pass


class _StopAfter(Checkpointer):
    """Saves as a Checkpointer does, then stops the run after ``stop_after`` saves (a crash)."""

    def __init__(self, *args, stop_after: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_after = stop_after

    def save(self, sim) -> None:
        super().save(sim)
        if self.count >= self.stop_after:
            raise _Stop


def _csv(rows_of: Simulator, path: Path) -> bytes:
    rows_of.recorder.write_csv(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "algorithm",
    [
        *ALGORITHMS,
        "divshare+buffer",
        "divshare+autotune",
        "swift+spill",
        "dpsgd+fpzip",
        "choco+reference",
    ],
)
def test_stop_save_load_continue_gives_identical_metrics(algorithm: str, tmp_path: Path) -> None:
    cfg = tiny(algorithm)
    ref = Simulator(build_setup(cfg))
    expected_result = ref.run()
    expected = _csv(ref, tmp_path / "ref.csv")

    rng = random.Random(algorithm)  # where to stop: varies by algorithm, fixed per run
    run_dir = tmp_path / "run"
    sim = Simulator(build_setup(cfg))
    every = parse_every(f"{rng.uniform(0.05, 0.2):.3f}vs")
    with pytest.raises(_Stop):
        sim.run(_StopAfter(run_dir, cfg, every, stop_after=rng.randint(1, 3)))
    # resume, stop again at a later checkpoint, resume again
    for stops in (rng.randint(1, 2), None):
        manifest, state = read_checkpoint(run_dir, cfg)
        sim = Simulator(build_setup(cfg))
        load_into(sim, state, run_dir)
        assert sim.now == manifest["virtual_time_s"] and sim.now < cfg.stop.virtual_time_s
        if stops is None:
            result = sim.run()
        else:
            with pytest.raises(_Stop):
                sim.run(
                    _StopAfter(
                        run_dir,
                        cfg,
                        every,
                        stop_after=stops,
                        sequence=manifest["sequence"],
                        resumed_at=sim.checkpoint_at,
                    )
                )
    assert _csv(sim, tmp_path / "resumed.csv") == expected
    _assert_same_result(result, expected_result)


def _assert_same_result(a, b) -> None:
    """Every simulated number of two RunResults (wall-clock figures aside) is the same."""
    assert a.virtual_time_s == b.virtual_time_s and a.finished_all == b.finished_all
    assert np.array_equal(a.iterations, b.iterations)
    assert np.array_equal(a.bytes_sent, b.bytes_sent)
    for k in ("delivered", "wasted", "data", "meta", "received"):
        assert np.array_equal(getattr(a.counters, k), getattr(b.counters, k)), k
    assert (a.messages_delivered, a.messages_dropped) == (b.messages_delivered, b.messages_dropped)
    assert (a.train_batches, a.train_jobs) == (b.train_batches, b.train_jobs)
    assert a.message_log == b.message_log


def _wait_for_checkpoint(run_dir: Path, sequence: int, proc: subprocess.Popen) -> None:
    """Until the run's manifest names checkpoint ``sequence`` or a later one."""
    path = run_dir / CHECKPOINT_DIR / MANIFEST
    end = time.monotonic() + 120.0
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < end, f"no checkpoint {sequence} in {run_dir} after 120 s"
        try:
            if json.loads(path.read_text())["sequence"] >= sequence:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.005)


@pytest.mark.parametrize("algorithm", ["divshare", "jwins"])
def test_kill_9_then_resume_gives_byte_identical_metrics(algorithm: str, tmp_path: Path) -> None:
    sets = [*TINY, f"algorithm.name={algorithm}", *EXTRA.get(algorithm, [])]
    sets[sets.index("stop.virtual_time_s=1.5")] = "stop.virtual_time_s=3"
    args = [a for s in sets for a in ("--set", s)]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["run", *args, "--out", str(ref), "--quiet"]) == 0

    exe = Path(sys.executable).with_name("peerlearn")
    cmd = [str(exe), "run", *args, "--out", str(run), "--quiet", "--checkpoint-every", "0.1vs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        # a random moment after checkpoint 1 to 4 (of ~30): maybe in the middle of writing one
        rng = random.Random(algorithm)
        _wait_for_checkpoint(run, rng.randint(1, 4), proc)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (run / "metrics.csv").exists()

    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    assert (run / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert not (run / CHECKPOINT_DIR).exists()  # finished: nothing left to resume
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoints"]["written"] >= 1


# -- what must be refused -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A run directory holding config.toml and a checkpoint, as an interrupted run leaves it."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    run_dir.mkdir()
    cfg = tiny("dpsgd")
    (run_dir / "config.toml").write_text(dump_config(cfg))
    with pytest.raises(_Stop):
        Simulator(build_setup(cfg)).run(
            _StopAfter(run_dir, cfg, parse_every("0.3vs"), stop_after=1)
        )
    return run_dir


def _copy(src: Path, dst: Path) -> Path:
    (dst / CHECKPOINT_DIR).mkdir(parents=True)
    for p in [src / "config.toml", *(src / CHECKPOINT_DIR).iterdir()]:
        (dst / p.relative_to(src)).write_bytes(p.read_bytes())
    return dst


def _refused(run_dir: Path, capsys, *extra: str) -> str:
    assert main(["run", "--resume", str(run_dir), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (run_dir / "metrics.csv").exists()
    return err


def _state_file(run_dir: Path) -> Path:
    manifest = json.loads((run_dir / CHECKPOINT_DIR / MANIFEST).read_text())
    return run_dir / CHECKPOINT_DIR / manifest["state_file"]


def test_a_valid_checkpoint_is_read(checkpointed: Path) -> None:
    manifest, state = read_checkpoint(checkpointed, load_config(checkpointed / "config.toml"))
    assert manifest["sequence"] == 1 and state["n"] == 6


def test_crash_while_writing_the_next_checkpoint_leaves_the_last_one(
    checkpointed: Path, tmp_path: Path
) -> None:
    """Killed after the next state file was renamed but before its manifest: the manifest still
    names the previous, complete state, and the stray files are never read."""
    run_dir = _copy(checkpointed, tmp_path)
    folder = run_dir / CHECKPOINT_DIR
    (folder / "state-000002.npz").write_bytes(b"half a zip")
    (folder / ".manifest.json.tmp").write_text('{"format": "peerlearn-checkp')
    (folder / ".state-000003.npz.tmp").write_bytes(b"")
    manifest, state = read_checkpoint(run_dir, load_config(run_dir / "config.toml"))
    assert manifest["sequence"] == 1 and state["n"] == 6


def test_corrupted_checkpoint_is_refused(checkpointed: Path, tmp_path: Path, capsys) -> None:
    run_dir = _copy(checkpointed, tmp_path)
    path = _state_file(run_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "corrupt" in _refused(run_dir, capsys)


def test_truncated_checkpoint_is_refused(checkpointed: Path, tmp_path: Path, capsys) -> None:
    run_dir = _copy(checkpointed, tmp_path)
    path = _state_file(run_dir)
    path.write_bytes(path.read_bytes()[:1000])
    assert "truncated" in _refused(run_dir, capsys)


def test_half_written_manifest_is_refused(checkpointed: Path, tmp_path: Path, capsys) -> None:
    run_dir = _copy(checkpointed, tmp_path)
    manifest = run_dir / CHECKPOINT_DIR / MANIFEST
    manifest.write_text(manifest.read_text()[:50])
    assert "unreadable" in _refused(run_dir, capsys)


def test_checkpoint_of_a_changed_config_is_refused(
    checkpointed: Path, tmp_path: Path, capsys
) -> None:
    run_dir = _copy(checkpointed, tmp_path)
    cfg_path = run_dir / "config.toml"
    cfg_path.write_text(cfg_path.read_text().replace("lr = 0.05", "lr = 0.06"))
    assert "different config" in _refused(run_dir, capsys)
    # a config given with --resume must be the run's own
    run_dir = _copy(checkpointed, tmp_path / "again")
    assert "differs" in _refused(run_dir, capsys, "--set", "train.lr=0.06")


def test_other_format_version_is_refused(checkpointed: Path, tmp_path: Path, capsys) -> None:
    run_dir = _copy(checkpointed, tmp_path)
    path = run_dir / CHECKPOINT_DIR / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] += 1
    path.write_text(json.dumps(manifest))
    assert "format version" in _refused(run_dir, capsys)


def test_missing_checkpoint_and_bad_interval_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.toml").write_text(dump_config(tiny("dpsgd")))
    assert "no checkpoint" in _refused(tmp_path, capsys)
    out = tmp_path / "new"
    assert main(["run", "--out", str(out), "--quiet", "--checkpoint-every", "10 min"]) == 2
    assert "--checkpoint-every" in capsys.readouterr().err
    assert not out.exists()


def test_resolved_config_digest_survives_its_round_trip(tmp_path: Path) -> None:
    """resume hashes config.toml as read back; it must hash like the config that wrote it."""
    for algorithm in ALGORITHMS:
        cfg = tiny(algorithm)
        (tmp_path / "c.toml").write_text(dump_config(cfg))
        assert config_digest(load_config(tmp_path / "c.toml")) == config_digest(cfg)


def test_a_checkpoint_that_cannot_be_written_is_skipped(
    checkpointed: Path, tmp_path: Path, monkeypatch
) -> None:
    """Disk full: a warning, the run goes on, the previous checkpoint stays the one to resume."""
    run_dir = _copy(checkpointed, tmp_path)
    cfg = load_config(run_dir / "config.toml")
    before = (run_dir / CHECKPOINT_DIR / MANIFEST).read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    hook = Checkpointer(run_dir, cfg, parse_every("0.5vs"), sequence=1)
    sim = Simulator(build_setup(cfg))
    with pytest.warns(RuntimeWarning, match="No space left"):
        sim.run(hook)
    assert hook.failed >= 1 and hook.count == 0 and sim.now == cfg.stop.virtual_time_s
    assert (run_dir / CHECKPOINT_DIR / MANIFEST).read_bytes() == before
    assert [p.name for p in (run_dir / CHECKPOINT_DIR).iterdir() if p.name.startswith(".")] == []
    read_checkpoint(run_dir, cfg)


# -- pieces ---------------------------------------------------------------------------------------


def test_parse_every() -> None:
    assert parse_every("10m").seconds == 600 and not parse_every("10m").virtual
    assert parse_every("1.5h").seconds == 5400 and parse_every("30s").seconds == 30
    assert parse_every("50vs").seconds == 50 and parse_every("50vs").virtual
    for bad in ("10", "0s", "-1m", "5 vs", "10d", "", "nanvs"):
        with pytest.raises(CheckpointError):
            parse_every(bad)


def test_state_tree_round_trip_keeps_types_order_and_sharing() -> None:
    t = torch.arange(4, dtype=torch.float32)
    payload = FragmentPayload(0, t)
    a = np.arange(3)
    tree = {
        "keys": {(1, 2): "tuple key", 3: [1.5, math.inf, -math.inf], "x": None},
        "order": {5: 0, 1: 0, 3: 0},
        "same": [a, a, t, payload, payload],
        "nan": math.nan,
        "np_scalar": np.float32(0.5),
    }
    enc, arrays = state_tree.encode(tree)
    enc = json.loads(json.dumps(enc, allow_nan=False))  # plain JSON, no NaN literals
    back = state_tree.decode(enc, arrays)
    assert back["keys"][(1, 2)] == "tuple key" and back["keys"][3][1:] == [math.inf, -math.inf]
    assert list(back["order"]) == [5, 1, 3]
    a2, a3, t2, p1, p2 = back["same"]
    assert a2 is a3 and np.array_equal(a2, a) and p1 is p2 and p1.values is t2
    assert torch.equal(t2, t) and math.isnan(back["nan"]) and back["np_scalar"] == 0.5
    assert len(arrays) == 2  # one array, one tensor: shared objects are stored once


def test_state_tree_refuses_arbitrary_objects() -> None:
    with pytest.raises(state_tree.StateError):
        state_tree.encode({"x": object()})
    with pytest.raises(state_tree.StateError):
        state_tree.encode({"x": np.array([object()])})
