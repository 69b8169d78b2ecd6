"""The launcher owns its node processes, checks the run fits before starting, and profiles on
one clock.

The process tests start a real ``peerlearn deploy`` of 3 nodes and kill or signal the
launcher. Node processes are identified by the pids the launcher writes (``nodes/sync/pids``)
and, against pid reuse, by their command line naming this test's folder: nothing else is
touched, and every process still alive at the end is killed by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerlearn.config import ConfigError, dump_config, load_config
from peerlearn.deploy import lifeline
from peerlearn.deploy.capacity import (
    CapacityError,
    Footprint,
    Machine,
    estimate,
    plan_processes,
)
from peerlearn.deploy.launcher import deploy_experiment
from peerlearn.results.summary import deploy_profile
from tests.test_deploy_run import _cfg, _env

GB = 10**9


# -- processes -----------------------------------------------------------------------------------


def _alive(pid: int, marker: str) -> bool:
    """Running (not a zombie) and still our node process (its command line names our folder)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and marker in cmdline


def _node_pids(run_dir: Path) -> list[int]:
    path = run_dir / "nodes" / "sync" / "pids"
    if not path.exists():
        return []
    return [int(line.split()[0]) for line in path.read_text().splitlines()[1:] if line.strip()]


def _start_launcher(tmp_path: Path, seconds: float, *extra: str) -> tuple[subprocess.Popen, Path]:
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(dump_config(_cfg(3, seconds, "deploy.nodes_per_process=1", *extra)))
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "peerlearn.cli", "deploy", str(cfg_path), "--out", str(run_dir)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return launcher, run_dir


def _wait_for(cond, timeout: float, launcher: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if launcher is not None and launcher.poll() is not None:
            return bool(cond())
        time.sleep(0.05)
    return bool(cond())


def _cleanup(launcher: subprocess.Popen, run_dir: Path) -> list[int]:
    """Kill (by pid) the launcher and any node process left; return the nodes that were left."""
    if launcher.poll() is None:
        launcher.kill()
    launcher.wait()
    left = [pid for pid in _node_pids(run_dir) if _alive(pid, str(run_dir))]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def _all_started(run_dir: Path) -> bool:
    return len(_node_pids(run_dir)) == 3


def test_launcher_killed_during_setup_leaves_no_node(tmp_path: Path) -> None:
    launcher, run_dir = _start_launcher(tmp_path, 60)
    try:
        assert _wait_for(lambda: _all_started(run_dir), 120, launcher)
        pids = _node_pids(run_dir)
        assert all(_alive(p, str(run_dir)) for p in pids)
        assert not (run_dir / "nodes" / "sync" / "start").exists()  # still setting up
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert _wait_for(lambda: not any(_alive(p, str(run_dir)) for p in pids), 5)
        assert not (run_dir / "nodes" / "sync" / "start").exists()
    finally:
        assert _cleanup(launcher, run_dir) == []


def test_launcher_killed_during_the_run_leaves_no_node(tmp_path: Path) -> None:
    launcher, run_dir = _start_launcher(tmp_path, 120)
    start = run_dir / "nodes" / "sync" / "start"
    try:
        assert _wait_for(start.exists, 120, launcher)
        time.sleep(1.5)
        pids = _node_pids(run_dir)
        assert len(pids) == 3 and all(_alive(p, str(run_dir)) for p in pids)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        # the death signal stops them cleanly: each writes its results as "orphaned"
        assert _wait_for(lambda: not any(_alive(p, str(run_dir)) for p in pids), 10)
    finally:
        assert _cleanup(launcher, run_dir) == []
    for i in range(3):
        stats = json.loads((run_dir / "nodes" / f"node-{i}.json").read_text())
        assert stats["stop_reason"] == "orphaned"
        assert stats["end_s"] < 10


def test_sigterm_during_the_run_stops_nodes_and_merges(tmp_path: Path) -> None:
    launcher, run_dir = _start_launcher(tmp_path, 120)
    start = run_dir / "nodes" / "sync" / "start"
    try:
        assert _wait_for(start.exists, 120, launcher)
        time.sleep(2.0)
        pids = _node_pids(run_dir)
        launcher.send_signal(signal.SIGTERM)  # what `timeout` sends
        assert launcher.wait(timeout=60) == 0
        assert not any(_alive(p, str(run_dir)) for p in pids)
    finally:
        assert _cleanup(launcher, run_dir) == []
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["deploy"]["stop_reasons"] == {"interrupted": 3}
    assert summary["deploy"]["nodes_per_process"] == 1
    assert summary["wall_time_s"] < 30
    assert summary["iterations"]["min"] >= 1
    _check_profile(summary["profile"])


def test_sigterm_during_setup_stops_every_node(tmp_path: Path) -> None:
    launcher, run_dir = _start_launcher(tmp_path, 60)
    try:
        assert _wait_for(lambda: _all_started(run_dir), 120, launcher)
        pids = _node_pids(run_dir)
        time.sleep(0.5)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0
        assert not any(_alive(p, str(run_dir)) for p in pids)
    finally:
        assert _cleanup(launcher, run_dir) == []
    assert not (run_dir / "nodes" / "sync" / "start").exists()
    summary = json.loads((run_dir / "summary.json").read_text())  # merged, with nothing in it
    assert summary["deploy"]["nodes_failed"] == [0, 1, 2]
    _check_profile(summary["profile"])
    assert summary["profile"]["run_wall_s"] == 0


def test_a_child_whose_parent_died_before_exec_exits() -> None:
    """The race PR_SET_PDEATHSIG alone leaves open: the parent dies between fork and prctl."""
    not_my_parent = os.getpid() + 1_000_000
    child = subprocess.run(
        [sys.executable, "-c", "print('ran')"],
        preexec_fn=lifeline.preexec(not_my_parent),
        capture_output=True,
        check=False,
    )
    assert child.returncode == lifeline.ORPHANED_EXIT and child.stdout == b""
    ok = subprocess.run(
        [sys.executable, "-c", "print('ran')"],
        preexec_fn=lifeline.preexec(os.getpid()),
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0 and ok.stdout == b"ran\n"


# -- checks before starting -----------------------------------------------------------------------


def test_ports_beyond_65535_are_refused_before_anything_starts(tmp_path: Path, capsys) -> None:
    from peerlearn.cli import main

    cfg = _cfg(600, 5, "deploy.base_port=65000")
    with pytest.raises(ConfigError, match=r"up to 65599, beyond 65535.*base_port <= 64936"):
        deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    args = ["deploy", "--out", str(tmp_path / "run2"), "--set", "nodes=600"]
    rc = main([*args, "--set", "deploy.base_port=65000"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "65535" in err
    assert not (tmp_path / "run2").exists()
    # the last port may be 65535 itself
    from peerlearn.deploy.process import check_port_range

    check_port_range(_cfg(536, 5, "deploy.base_port=65000"))


def _digits(nodes: int, *extra: str):
    return load_config(None, [f"nodes={nodes}", "data.dataset=digits", "model.hidden=[32]", *extra])


FP = Footprint(process_bytes=400_000_000, node_bytes=10_000_000, model_params=1000, data_bytes=0)
SMALL = Machine(available_bytes=24 * GB, cores=2, fd_limit=20_000)


def test_planner_chooses_nodes_per_process_when_unset() -> None:
    # few nodes: one process each
    plan = plan_processes(_digits(4), SMALL, FP)
    assert (plan.nodes_per_process, plan.processes, plan.chosen) == (1, 4, True)
    # more nodes than 4 processes per core: grouped, evenly
    plan = plan_processes(_digits(64), SMALL, FP)
    assert (plan.nodes_per_process, plan.processes) == (8, 8)
    plan = plan_processes(_digits(20), SMALL, FP)
    assert plan.processes == 7 and plan.nodes_per_process == 3
    # the incident: 600 nodes, one process each, would need 600 x 0.4 GB; the plan fits
    plan = plan_processes(_digits(600), SMALL, FP)
    assert plan.memory_bytes <= plan.budget_bytes < SMALL.available_bytes
    assert plan.processes * plan.nodes_per_process >= 600
    # many cores: as many processes as memory allows (not one process per node beyond it)
    big = Machine(available_bytes=24 * GB, cores=64, fd_limit=20_000)
    plan = plan_processes(_digits(600), big, FP)
    assert FP.total(600, plan.nodes_per_process) <= plan.budget_bytes
    smaller = plan.nodes_per_process - 1
    assert FP.total(600, smaller) > plan.budget_bytes or 600 / smaller > 4 * 64 or smaller == 0
    # sockets: an all-to-all run of 600 nodes needs ~1800 descriptors per node; with a low
    # limit the planner keeps fewer nodes per process than the cores would like
    low_fd = Machine(available_bytes=200 * GB, cores=2, fd_limit=20_000)
    plan = plan_processes(_digits(600), low_fd, FP)
    assert plan.nodes_per_process <= (20_000 - 256) // (3 * 601) and plan.notes == ()


def test_planner_refuses_what_cannot_fit_and_names_what_it_needs() -> None:
    # configured too small: the message names the smallest nodes_per_process that fits
    with pytest.raises(CapacityError) as err:
        plan_processes(_digits(600, "deploy.nodes_per_process=1"), SMALL, FP)
    message = str(err.value)
    assert "\n" not in message and "600 nodes in 600 processes of 1" in message
    need = int(message.rsplit(">= ", 1)[1].split()[0])
    budget = int(0.8 * SMALL.available_bytes)
    assert FP.total(600, need) <= budget < FP.total(600, need - 1)
    # configured large enough: kept as it is
    plan = plan_processes(_digits(600, f"deploy.nodes_per_process={need}"), SMALL, FP)
    assert (plan.nodes_per_process, plan.chosen) == (need, False)
    # nothing fits, not even one process: the memory it needs
    tiny = Machine(available_bytes=2 * GB, cores=2, fd_limit=20_000)
    with pytest.raises(CapacityError, match=r"600 nodes need about 6\.4 GB even in one process"):
        plan_processes(_digits(600), tiny, FP)
    # --emulate means one process per node
    with pytest.raises(CapacityError, match="--emulate needs 1"):
        plan_processes(_digits(600, "deploy.emulate=true"), SMALL, FP)


def test_size_check_runs_before_the_run_directory_exists(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Machine, "here", classmethod(lambda cls: Machine(1 * GB, 2, 20_000)))
    cfg = _cfg(40, 5, "deploy.nodes_per_process=1")
    with pytest.raises(CapacityError, match=r"set deploy\.nodes_per_process >= "):
        deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_footprint_grows_with_data_and_model() -> None:
    digits = estimate(_digits(4))
    fmnist = estimate(load_config(None, ["data.dataset=fashion_mnist", "model.hidden=[32]"]))
    cifar = estimate(load_config(None, ["data.dataset=cifar10", "model.name=gn_lenet"]))
    assert digits.data_bytes < 1_000_000 < fmnist.data_bytes < cifar.data_bytes
    assert fmnist.data_bytes == 70_000 * (4 * 784 + 8)
    assert digits.process_bytes < fmnist.process_bytes < cifar.process_bytes
    assert digits.model_params == 64 * 32 + 32 + 32 * 10 + 10
    assert cifar.node_bytes > digits.node_bytes


# -- profile --------------------------------------------------------------------------------------


def _check_profile(profile: dict) -> None:
    numbers = {k: v for k, v in profile.items() if isinstance(v, (int, float))}
    assert all(v >= 0 for v in numbers.values()), numbers
    phases = ("prepare_wall_s", "setup_wall_s", "run_wall_s", "merge_wall_s")
    assert sum(profile[k] for k in phases) <= profile["launcher_wall_s"] + 1e-9
    assert profile["clock"] == "launcher"
    run = profile["run_wall_s"]
    if run > 0:
        assert profile["train_wall_s_per_node_mean"] <= run
        assert profile["eval_wall_s_per_evaluating_node_mean"] <= run
        assert 0 <= profile["train_share_of_run_mean"] <= 1


def test_deploy_profile_uses_one_clock_and_per_node_means() -> None:
    # 16 nodes sharing 2 processes for a 20 s run: their training times add up to far more
    # than the wall time (the old profile reported engine_wall_s = wall - sum = negative)
    stats = [
        {"train_wall_s": 2.4, "eval_wall_s": 0.1 if i < 4 else 0.0, "train_jobs": 30}
        for i in range(16)
    ]
    phases = {"t_spawn": 100.5, "t_start": 110.0, "t_end": 131.0}
    p = deploy_profile(stats, phases=phases, launcher_t0=100.0, now=131.5)
    _check_profile(p)
    assert p["launcher_wall_s"] == 31.5 and p["setup_wall_s"] == 9.5 and p["run_wall_s"] == 21.0
    assert p["train_wall_s_per_node_mean"] == pytest.approx(2.4)
    assert p["eval_wall_s_per_evaluating_node_mean"] == pytest.approx(0.1)
    assert p["train_jobs"] == 480 and "engine_wall_s" not in p
    # merged later without the launcher: only the per-node figures
    later = deploy_profile(stats, phases=None, launcher_t0=None, now=0.0)
    assert later["clock"] == "nodes" and "run_wall_s" not in later


def test_parent_watch_exits_during_setup_and_stops_running_nodes(tmp_path: Path) -> None:
    """The watchdog alone (no death signal: the watched pid is simply not the parent)."""
    setup = (
        "import time; from peerlearn.deploy.lifeline import ParentWatch\n"
        "ParentWatch(1_000_000_000 + 7, interval_s=0.05).start(); time.sleep(30)\n"
    )
    t0 = time.monotonic()
    child = subprocess.run([sys.executable, "-c", setup], env=_env(), check=False, timeout=30)
    assert child.returncode == lifeline.ORPHANED_EXIT and time.monotonic() - t0 < 10
    running = (
        "import sys, time; from peerlearn.deploy.lifeline import ParentWatch\n"
        "w = ParentWatch(1_000_000_000 + 7, interval_s=0.05, grace_s=0.5)\n"
        "w.on_orphan = lambda: print('stop requested', flush=True)\n"
        "w.start(); time.sleep(30)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", running], env=_env(), capture_output=True, check=False, timeout=30
    )
    assert child.returncode == lifeline.ORPHANED_EXIT
    assert child.stdout == b"stop requested\n"


def test_chosen_nodes_per_process_is_used_and_profiled(tmp_path: Path, monkeypatch) -> None:
    """A machine of one core and one process per core: the 3 nodes share one process."""
    import peerlearn.deploy.capacity as capacity

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(capacity, "PROCESSES_PER_CORE", 1)
    monkeypatch.setattr(Machine, "here", classmethod(lambda cls: Machine(16 * GB, 1, 20_000)))
    run_dir, summary = deploy_experiment(_cfg(3, 4), tmp_path / "run", quiet=True)
    assert summary["deploy"]["nodes_per_process"] == 3
    assert "nodes_per_process = 3" in (run_dir / "config.toml").read_text()
    assert len(_node_pids(run_dir)) == 1
    assert summary["deploy"]["stop_reasons"] == {"deadline": 3}
    profile = summary["profile"]
    _check_profile(profile)
    assert profile["nodes_reporting"] == 3 and profile["run_wall_s"] >= 4
    # the three nodes shared one torch thread: their training adds up to at most the run
    assert 3 * profile["train_wall_s_per_node_mean"] <= profile["run_wall_s"]
