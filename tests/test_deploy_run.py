"""Whole deployments over loopback: one OS process per node, then one standard run directory.

Each test starts its processes through the launcher, which stops every one of them on the way
out (normally, on Ctrl-C, or on an error), so nothing outlives a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from peerlearn.config import load_config
from peerlearn.deploy.launcher import deploy_experiment, launch_local, merge_run
from peerlearn.results.messages import read_messages_csv
from peerlearn.results.metrics import COLUMNS
from tests.test_deploy_node import free_port_base

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cfg(nodes: int, seconds: float, *extra: str):
    return load_config(
        None,
        [
            "name=deploy-test",
            f"nodes={nodes}",
            "data.dataset=digits",
            "data.partition=iid",
            "model.hidden=[32]",
            "train.local_steps=10",
            "topology.kind=full",
            "network.preset=uniform",
            "network.stragglers=0",
            "algorithm.name=divshare",
            "algorithm.fragments=4",
            "algorithm.fanout=2",
            f"stop.virtual_time_s={seconds}",
            "eval.every_s=1",
            f"deploy.base_port={free_port_base(nodes)}",
            *extra,
        ],
    )


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{SRC}:{path}" if path else SRC, OMP_NUM_THREADS="1")


def test_local_divshare_deployment(tmp_path: Path, monkeypatch) -> None:
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    cfg = _cfg(4, 5, "eval.log_messages=true")
    run_dir, summary = deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert summary["engine"] == "deploy"
    assert summary["deploy"]["nodes_failed"] == []
    assert summary["deploy"]["stop_reasons"] == {"deadline": 4}
    assert summary["deploy"]["messages_rejected"] == {}
    assert 4.5 < summary["wall_time_s"] < 10
    assert summary["final"]["test_acc_mean"] > 0.8
    assert summary["iterations"]["min"] >= 5
    # every byte sent is a header plus a payload: delivered never exceeds sent
    assert 0 < summary["bytes"]["delivered"] <= summary["bytes"]["sent"]
    assert (run_dir / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert 'engine = "deploy"' in (run_dir / "config.toml").read_text()
    assert (run_dir / "plots" / "acc_vs_time.png").exists()
    # the per-message log pairs every received frame with its send
    log = read_messages_csv(run_dir / "messages.csv")
    assert len(log) == summary["messages"]["delivered"]
    assert int(log.nbytes.sum()) == summary["bytes"]["delivered"]
    assert set(log.kind) == {"fragment"}
    # sent and received within the run (how long a frame waited depends on the machine's load)
    assert (log.transfer_s > 0).all() and (log.sent_s >= 0).all()
    assert (log.delivered_s <= summary["deploy"]["run_wall_s"] + 1).all()
    # every frame handed to ZeroMQ was either received or still queued when the run stopped;
    # how many were queued depends on how far receivers lagged (machine load), so the check is
    # exact accounting plus TCP order: per link, the received frames are a prefix of the sent
    unmatched = summary["deploy"]["messages_log_unmatched"]
    assert summary["deploy"]["messages_sent"] == len(log) + unmatched
    sent_seq: dict[tuple[int, int], list[int]] = {}
    recv_seq: dict[tuple[int, int], list[int]] = {}
    for i in range(4):
        logs = json.loads((run_dir / "nodes" / f"messages-{i}.json").read_text())
        for dst, seq, *_ in logs["sent"]:
            sent_seq.setdefault((i, dst), []).append(seq)
        for src, seq, *_ in logs["received"]:
            recv_seq.setdefault((src, i), []).append(seq)
    for link, seqs in sent_seq.items():
        assert seqs == list(range(len(seqs))), link
        got = recv_seq.get(link, [])
        assert got == list(range(len(got))) and len(got) <= len(seqs), link


def test_killed_node_does_not_stop_the_others(tmp_path: Path, monkeypatch) -> None:
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    cfg = _cfg(3, 5, "deploy.stall_timeout_s=2")
    run_dir = tmp_path / "run"
    (run_dir / "nodes").mkdir(parents=True)
    from peerlearn.config import dump_config

    (run_dir / "config.toml").write_text(dump_config(cfg))

    def kill_later(procs) -> None:
        threading.Timer(2.0, lambda: os.kill(procs[2].pid, signal.SIGKILL)).start()

    launch_local(cfg, run_dir, on_started=kill_later, log=lambda *_: None)
    summary, rec = merge_run(cfg, run_dir)
    d = summary["deploy"]
    assert d["nodes_failed"] == [2]
    assert d["stop_reasons"] == {"deadline": 2}  # DivShare is asynchronous: no one waits
    assert summary["final"]["test_acc_mean"] > 0.8
    # the dead node's curve stops early; the others evaluate until the end
    last = {n: max(r[0] for r in rec.rows if r[1] == n and r[3] == "test_acc") for n in (0, 2)}
    assert last[2] < 3.5 < last[0]


def test_ctrl_c_stops_everything_and_keeps_results(tmp_path: Path) -> None:
    cfg_path = tmp_path / "cfg.toml"
    from peerlearn.config import dump_config

    cfg_path.write_text(dump_config(_cfg(3, 120)))
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "peerlearn.cli", "deploy", str(cfg_path), "--out", str(run_dir)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        start = run_dir / "nodes" / "sync" / "start"
        deadline = time.monotonic() + 120
        while not start.exists() and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.1)
        assert start.exists()
        time.sleep(2.0)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["deploy"]["stop_reasons"] == {"interrupted": 3}
    assert summary["wall_time_s"] < 30
    assert summary["iterations"]["min"] >= 1


def test_hosts_file_several_nodes_per_process_and_merge(tmp_path: Path) -> None:
    """The multi-machine path on one machine: two 'hosts' (127.0.0.1 and 127.0.0.2), each one
    ``peerlearn node`` process holding several nodes, then ``peerlearn merge``."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError:
            import pytest

            pytest.skip("127.0.0.2 is not a loopback address here")
    from peerlearn.config import dump_config

    run_dir = tmp_path / "run"
    nodes_dir = run_dir / "nodes"
    sync = nodes_dir / "sync"
    sync.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dump_config(_cfg(3, 4)))
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 0,1  # first machine\n127.0.0.2 2\n")
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "peerlearn.cli", "node", str(run_dir / "config.toml")),
                *("--hosts", str(hosts), "--ids", ids, "--out", str(nodes_dir)),
                *("--sync-dir", str(sync)),
            ],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for ids in ("0-1", "2")
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < 3 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs)
            time.sleep(0.05)
        (sync / "start").write_text(repr(time.time() + 0.2))
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    merged = subprocess.run(
        [sys.executable, "-m", "peerlearn.cli", "merge", str(run_dir)], env=_env(), check=False
    )
    assert merged.returncode == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["deploy"]["stop_reasons"] == {"deadline": 3}
    assert summary["deploy"]["messages_rejected"] == {}
    assert summary["final"]["test_acc_mean"] > 0.8


def test_merge_counts_nodes_stopped_by_an_error_as_failed(tmp_path: Path) -> None:
    from dataclasses import asdict

    from peerlearn.deploy.node import NodeStats

    cfg = _cfg(3, 4)
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir()
    for i, reason in enumerate(("deadline", "error")):  # node 2 left nothing at all
        stats = NodeStats(i, iterations=5, stop_reason=reason, end_s=4.0)
        (nodes_dir / f"node-{i}.json").write_text(json.dumps(asdict(stats)))
    summary, _ = merge_run(cfg, tmp_path)
    assert summary["deploy"]["nodes_failed"] == [1, 2]
    assert summary["deploy"]["stop_reasons"] == {"deadline": 1, "error": 1}


def test_a_node_process_makes_room_for_its_sockets() -> None:
    import resource

    import zmq

    from peerlearn.deploy.process import _size_for_sockets

    ctx = zmq.Context()
    try:
        assert ctx.get(zmq.MAX_SOCKETS) == 1023  # ZeroMQ's default: too few for 16 x 256
        _size_for_sockets(ctx, 16 * 257)
        assert ctx.get(zmq.MAX_SOCKETS) >= 16 * 257
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft == resource.RLIM_INFINITY or soft >= min(hard, 3 * 16 * 257)
    finally:
        ctx.term()
