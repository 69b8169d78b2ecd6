"""``deploy --emulate``: namespaces, tc-shaped rates, latency, teardown (also after a kill).

The tests that create namespaces need root, iproute2 and a kernel with veth, bridge and HTB;
they are skipped otherwise (CI containers usually forbid them). Everything a test creates has
the prefix of this pytest process or of a launcher it started, and is removed by the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from peerlearn.cli import main
from peerlearn.config import dump_config, load_config
from peerlearn.deploy import emulate
from peerlearn.deploy.errors import DeployError
from peerlearn.deploy.launcher import deploy_experiment
from peerlearn.network.presets import NetworkSpec, RouteTable, build_network
from tests.test_deploy_node import free_port_base

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _can_emulate() -> str | None:
    """None when namespaces, veths and HTB work here, else why not."""
    try:
        emulate.check_available()
    except DeployError as exc:
        return str(exc)
    ns = f"pl{os.getpid()}-check"
    try:
        for cmd in (
            ["ip", "netns", "add", ns],
            ["ip", "-n", ns, "link", "add", "name", "a0", "type", "veth", "peer", "name", "a1"],
            ["tc", "-n", ns, "qdisc", "add", "dev", "a0", "root", "handle", "1:", "htb"],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                return f"{' '.join(cmd)}: {proc.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return None


REASON = _can_emulate()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"cannot emulate here: {REASON}")


def _ours(prefix: str) -> list[str]:
    return [ns for ns in emulate.list_namespaces() if ns.startswith(prefix)]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{SRC}:{path}" if path else SRC, OMP_NUM_THREADS="1")


RECEIVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = int(sys.argv[2]); got = 0
while got < n:
    b = c.recv(1 << 16)
    if not b: break
    got += len(b)
    if n == 1: c.sendall(b); got = 0; n = 1 if b != b"q" else 0
c.sendall(b"k")
"""

SENDER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5001)); c.setsockopt(6, 1, 1)  # TCP_NODELAY
n = int(sys.argv[2])
if n == 1:  # ping-pong: median round trip of one byte
    rtts = []
    for _ in range(7):
        t = time.monotonic(); c.sendall(b"p"); c.recv(1); rtts.append(time.monotonic() - t)
    c.sendall(b"q"); print(sorted(rtts)[3])
else:
    t = time.monotonic(); c.sendall(b"x" * n); c.recv(1); print(time.monotonic() - t)
"""


def _exchange(net: emulate.EmulatedNetwork, n: int, src: int = 0, dst: int = 1) -> float:
    """Seconds to send n bytes from src to dst and get a byte back (n = 1: median RTT)."""
    recv = subprocess.Popen(
        [*net.exec_prefix(dst), sys.executable, "-c", RECEIVER, net.addresses[dst], str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        out = subprocess.run(
            [*net.exec_prefix(src), sys.executable, "-c", SENDER, net.addresses[dst], str(n)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return float(out.stdout)
    finally:
        recv.kill()
        recv.wait()


@needs_netns
@pytest.mark.parametrize("mbps", [8.0, 20.0])
def test_shaped_rate(mbps: float) -> None:
    """N bytes over an X Mbit/s emulated path take about N*8/X seconds (TCP/IP headers: +4%)."""
    net = emulate.EmulatedNetwork(
        build_network("uniform", 2, mbps=mbps, latency_ms=0.0), prefix=f"pl{os.getpid()}"
    )
    net.up()
    try:
        n = 1_500_000
        took = _exchange(net, n)
        expected = n * 8 / (mbps * 1e6)
        assert expected * 0.9 < took < expected * 1.15, (took, expected)
    finally:
        net.down()
    assert _ours(f"pl{os.getpid()}-") == []


@needs_netns
def test_asymmetric_rates_bound_by_slower_end() -> None:
    """A fast sender to a straggler goes at the straggler's download rate."""
    spec = build_network("stragglers", 2, fast_mbps=40, slowdown=4, straggler_ids=[1])
    net = emulate.EmulatedNetwork(spec, prefix=f"pl{os.getpid()}")
    net.up()
    try:
        took = _exchange(net, 1_000_000)
        assert 0.8 * 0.9 < took < 0.8 * 1.15  # 1 MB at 10 Mbit/s
    finally:
        net.down()


@needs_netns
def test_private_pair_links() -> None:
    """Per-pair links (as Diablo's): u32 filters on the destination pick each pair's class."""
    links = {(0, 1): 0, (1, 0): 1, (0, 2): 2, (2, 0): 3, (1, 2): 4, (2, 1): 5}
    mbps = [8, 8, 20, 20, 50, 50]
    inf = np.full(3, np.inf)
    spec = NetworkSpec(
        inf,
        inf.copy(),
        np.zeros((3, 3)),
        links=[m * 1e6 / 8 for m in mbps],
        route=RouteTable(3, {pair: (k,) for pair, k in links.items()}),
    )
    net = emulate.EmulatedNetwork(spec, prefix=f"pl{os.getpid()}")
    net.up()
    try:
        assert 1.0 * 0.9 < _exchange(net, 1_000_000, 0, 1) < 1.0 * 1.15  # 8 Mbit/s
        assert 0.4 * 0.9 < _exchange(net, 1_000_000, 0, 2) < 0.4 * 1.15  # 20 Mbit/s
    finally:
        net.down()


@needs_netns
def test_latency_added() -> None:
    """50 ms end to end: 25 ms on each side, so a round trip takes about 100 ms."""
    if not emulate.netem_available():
        pytest.skip("this kernel has no sch_netem: latency cannot be emulated")
    net = emulate.EmulatedNetwork(
        build_network("uniform", 2, mbps=100, latency_ms=50.0), prefix=f"pl{os.getpid()}"
    )
    net.up()
    try:
        rtt = _exchange(net, 1)
        assert 0.095 < rtt < 0.13, rtt
    finally:
        net.down()


def test_plan_splits_latency_and_refuses_shared_links(capsys) -> None:
    spec = build_network("uniform", 3, mbps=16, latency_ms=10)
    plan = emulate.plan_links(spec, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], netem=True)
    assert any("rate 16000000bit" in line for line in plan.node[0])
    assert any("netem delay 5000us" in line for line in plan.node[0])
    assert any("dev v0" in line and "netem delay 5000us" in line for line in plan.bridge[0])
    assert emulate.plan_links(spec, ["a", "b", "c"], netem=False).notes  # says latency is lost
    with pytest.raises(DeployError, match="shared with other pairs"):
        emulate.plan_links(build_network("diablo_60n", 60), ["x"] * 60, netem=True)
    args = ["deploy", "--emulate", "--set", "nodes=60", "--set", "network.preset=diablo_60n"]
    if os.geteuid() == 0 and emulate.shutil.which("tc"):
        assert main([*args, "--out", "/nonexistent/never-made"]) == 2  # before any mkdir
        if not emulate.netem_available():
            netem = ["deploy", "--emulate", "--set", "deploy.emulate_latency=netem"]
            assert main([*netem, "--set", "nodes=8", "--out", "/nonexistent/x"]) == 2
            assert "no sch_netem" in capsys.readouterr().err
    diablo = build_network("diablo_60n", 60, intra_region_mbps=500)
    addrs = [f"10.0.0.{i + 1}" for i in range(60)]
    plan = emulate.plan_links(diablo, addrs, netem=True)
    # capetown (node 0) to tokyo (node 6): 26 Mbps, a u32 filter on tokyo-0's address
    assert (
        "class add dev eth0 parent 1: classid 1:16 htb rate 26000000bit ceil 26000000bit"
        in (plan.node[0])
    )
    assert any("match ip dst 10.0.0.7/32 flowid 1:16" in line for line in plan.node[0])


def test_no_root_is_a_clear_error(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    args = ["deploy", "--emulate", "--set", "nodes=8", "--out", str(tmp_path / "r")]
    rc = main(args)
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs root" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(emulate.shutil, "which", lambda tool: None)
    assert main(args) == 2
    assert "iproute2" in capsys.readouterr().err


def _cfg_args(nodes: int, seconds: float) -> list[str]:
    return [
        "name=emulate-test",
        f"nodes={nodes}",
        "data.dataset=digits",
        "data.partition=iid",
        "model.hidden=[16]",
        "train.local_steps=5",
        "topology.kind=full",
        "network.preset=uniform",
        "network.mbps=20",
        "network.stragglers=0",
        "compute.stragglers=0",
        "algorithm.name=divshare",
        "algorithm.fragments=4",
        "algorithm.fanout=2",
        f"stop.virtual_time_s={seconds}",
        "eval.every_s=2",
        "eval.test_samples=200",
        f"deploy.base_port={free_port_base(nodes)}",
        "deploy.emulate=true",
    ]


@needs_netns
def test_emulated_divshare_run(tmp_path: Path, monkeypatch) -> None:
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    cfg = load_config(None, _cfg_args(3, 6))
    run_dir, summary = deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert summary["deploy"]["nodes_failed"] == []
    assert summary["deploy"]["stop_reasons"] == {"deadline": 3}
    assert summary["bytes"]["delivered"] > 0
    emu = json.loads((run_dir / "emulation.json").read_text())
    assert emu["addresses"] == ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
    assert summary["deploy"]["emulation"]["up_mbps"] == [20.0] * 3
    assert (run_dir / "metrics.csv").exists()
    assert _ours(emu["prefix"] + "-") == []


@needs_netns
@pytest.mark.parametrize("mode", ["transport", "off"])
def test_transport_latency_paces_dpsgd(tmp_path: Path, monkeypatch, mode: str) -> None:
    """Without netem, the sender holds each frame: synchronous D-PSGD over a 250 ms link can do
    at most one iteration per 250 ms; with latency off it does many more."""
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    args = _cfg_args(2, 4)
    args[args.index("algorithm.name=divshare") :] = [
        "algorithm.name=dpsgd",
        "stop.virtual_time_s=4",
        "eval.every_s=2",
        "eval.test_samples=200",
        f"deploy.base_port={free_port_base(2)}",
        "deploy.emulate=true",
        "network.latency_ms=250",
        "network.mbps=100",
        f"deploy.emulate_latency={mode}",
    ]
    _, summary = deploy_experiment(load_config(None, args), tmp_path / "run", quiet=True)
    assert summary["deploy"]["emulation"]["latency"] == mode
    iters = summary["iterations"]["max"]
    print(f"emulate_latency={mode}: {iters} D-PSGD iterations in 4 s")
    if mode == "transport":
        assert 4 <= iters <= 4 / 0.25 + 1, iters
    else:
        assert iters > 4 / 0.25 + 1, iters


def _start_launcher(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen, str]:
    cfg = load_config(None, _cfg_args(2, seconds))
    path = tmp_path / "exp.toml"
    path.write_text(dump_config(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "peerlearn.cli", "deploy", str(path), "--out", str(tmp_path / "r")],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    prefix = f"pl{proc.pid}-"
    deadline = time.monotonic() + 60
    # wait until the nodes are running in their namespaces
    while not (tmp_path / "r" / "nodes" / "sync" / "start").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(_ours(prefix)) == 3
    return proc, prefix


@needs_netns
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_tears_down(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM (kill) and SIGINT (Ctrl-C) mid-run: nodes stop, results merge, namespaces go."""
    proc, prefix = _start_launcher(tmp_path, 30)
    time.sleep(1)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert _ours(prefix) == []
    assert (tmp_path / "r" / "summary.json").exists()  # stopped like Ctrl-C: results merged


@needs_netns
def test_sigkill_leftovers_removed_by_cleanup(tmp_path: Path, capsys) -> None:
    proc, prefix = _start_launcher(tmp_path, 30)
    proc.kill()
    proc.wait()
    assert len(_ours(prefix)) == 3  # SIGKILL gives the launcher no chance
    assert main(["emulate-cleanup", "--prefix", prefix]) == 0
    assert "removed 3 namespaces" in capsys.readouterr().out
    assert _ours(prefix) == []
