"""``deploy.tcp_congestion``: the emulated namespaces' TCP congestion control, and the simulator's
autotuned send buffer following it.

The commands are checked with the command runner replaced; one test creates two namespaces and
reads the algorithm back from real sockets (root and iproute2 only, skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peerlearn.cli import main
from peerlearn.config import ConfigError, dump_config, load_config
from peerlearn.deploy import emulate
from peerlearn.deploy.errors import DeployError
from peerlearn.deploy.launcher import deploy_experiment
from peerlearn.network.presets import build_network
from peerlearn.sim.send_buffer import AUTOTUNE, send_buffer_of
from tests.test_deploy_emulate import REASON, _ours

ROUTE = "10.213.0.0/16 dev eth0 proto kernel scope link src 10.213.0.1"


class FakeRun:
    """Stands in for ``emulate._run``: records each command, answers reads from ``replies``."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.calls: list[list[str]] = []
        self.replies = replies

    def __call__(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        out = next((v for k, v in self.replies.items() if k in " ".join(cmd)), "")
        return subprocess.CompletedProcess(list(cmd), 0, out, "")


def test_sysctl_in_the_namespace_when_allowed(monkeypatch) -> None:
    run = FakeRun({"sysctl -n": "cubic\n"})
    monkeypatch.setattr(emulate, "_run", run)
    how = emulate.set_congestion("pl7-0", "cubic", ROUTE, ["reno", "cubic"])
    assert how == "sysctl"
    assert run.calls == [
        ["ip", "netns", "exec", "pl7-0", "sysctl", "-w", "net.ipv4.tcp_congestion_control=cubic"],
        ["ip", "netns", "exec", "pl7-0", "sysctl", "-n", "net.ipv4.tcp_congestion_control"],
    ]


def test_route_metric_when_the_kernel_restricts_it(monkeypatch) -> None:
    """Not in tcp_allowed_congestion_control: a namespace may not default to it (EPERM), so
    the subnet route carries it instead; the host's allowed list is never touched."""
    shown = f"{ROUTE} congctl cubic\n"
    run = FakeRun({"route show": shown})
    monkeypatch.setattr(emulate, "_run", run)
    assert emulate.set_congestion("pl7-3", "cubic", ROUTE, ["reno", "bbr"]) == "route"
    assert run.calls == [
        ["ip", "-n", "pl7-3", "route", "replace", *ROUTE.split(), "congctl", "cubic"],
        ["ip", "-n", "pl7-3", "route", "show", "10.213.0.0/16"],
    ]
    assert not any("sysctl" in call for call in run.calls)


def test_a_setting_that_does_not_stick_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(emulate, "_run", FakeRun({"sysctl -n": "bbr\n"}))
    with pytest.raises(DeployError, match="reads 'bbr'"):
        emulate.set_congestion("pl7-0", "cubic", ROUTE, ["cubic"])
    monkeypatch.setattr(emulate, "_run", FakeRun({"route show": ROUTE}))
    with pytest.raises(DeployError, match="reads '\\(none\\)'"):
        emulate.set_congestion("pl7-0", "cubic", ROUTE, [])


def test_unavailable_algorithm_refused_before_anything_is_made(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(emulate, "congestion_controls", lambda kind: ["reno", "bbr"])
    emulate.check_congestion("system")
    emulate.check_congestion("bbr")
    with pytest.raises(DeployError, match=r"'cubic' is not in .*available.*reno bbr"):
        emulate.check_congestion("cubic")
    run = FakeRun({})
    monkeypatch.setattr(emulate, "_run", run)
    monkeypatch.setattr(emulate, "check_available", lambda: None)
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 0)
    net = emulate.EmulatedNetwork(build_network("uniform", 2, mbps=10), tcp_congestion="cubic")
    with pytest.raises(DeployError, match="'cubic' is not in"):
        net.up()
    assert run.calls == [["ip", "netns", "list"]]  # looked for leftovers, created nothing


def test_cli_refusals_are_one_line_and_leave_no_run(monkeypatch, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    base = ["deploy", "--set", "nodes=3", "--out", str(out)]
    assert main([*base, "--set", "deploy.tcp_congestion=cubic"]) == 2  # no --emulate
    err = capsys.readouterr().err.strip()
    assert "needs --emulate" in err and len(err.splitlines()) == 1
    assert main([*base, "--set", "deploy.tcp_congestion=vegas"]) == 2  # not an option
    err = capsys.readouterr().err.strip()
    assert "deploy.tcp_congestion" in err and len(err.splitlines()) == 1
    assert not out.exists()
    import peerlearn.deploy.launcher as launcher

    monkeypatch.setattr(launcher, "check_available", lambda: None)
    monkeypatch.setattr(emulate, "congestion_controls", lambda kind: ["reno"])
    cfg = load_config(None, ["nodes=3", "deploy.emulate=true", "deploy.tcp_congestion=bbr"])
    with pytest.raises(DeployError, match="'bbr' is not in"):
        deploy_experiment(cfg, out, quiet=True)
    assert not out.exists()


def test_config_dump_unchanged_at_default() -> None:
    assert "tcp_congestion" not in dump_config(load_config(None, []))
    cfg = load_config(None, ["deploy.tcp_congestion=cubic"])
    assert 'tcp_congestion = "cubic"' in dump_config(cfg)
    with pytest.raises(ConfigError):
        load_config(None, ["deploy.tcp_congestion=cubic2"])


@pytest.mark.parametrize(
    ("deploy", "network", "expect"),
    [
        ("system", None, "cubic"),  # Linux's default when nothing says otherwise
        ("bbr", None, "bbr"),
        ("reno", None, "reno"),
        ("bbr", "cubic", "cubic"),  # an explicit network.tcp_congestion wins
    ],
)
def test_simulator_follows_the_deployment(deploy: str, network: str | None, expect: str) -> None:
    sets = ["network.send_buffer=deploy", "deploy.sndbuf_bytes=0"]
    sets += [f"deploy.tcp_congestion={deploy}"]
    if network:
        sets.append(f"network.tcp_congestion={network}")
    for sb in ("deploy", "autotune"):
        cfg = load_config(None, [*sets, f"network.send_buffer={sb}"])
        buffer = send_buffer_of(cfg.network, cfg.deploy)
        assert buffer is not None and buffer.autotune == AUTOTUNE[expect]
    # a fixed deployment buffer has nothing to autotune
    fixed = load_config(None, [*sets, "deploy.sndbuf_bytes=8192"])
    buffer = send_buffer_of(fixed.network, fixed.deploy)
    assert buffer is not None and buffer.autotune is None


PROBE = """
import socket, sys
srv = socket.socket(); srv.bind((sys.argv[1], 5002)); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); conn.sendall(b"x" * 200000)
print(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode())
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5002)); got = 0
while got < 200000: got += len(c.recv(1 << 16))
print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode())
"""


@pytest.mark.skipif(REASON is not None, reason=f"cannot emulate here: {REASON}")
@pytest.mark.parametrize("algorithm", ["cubic", "reno"])
def test_namespace_sockets_use_the_algorithm(algorithm: str) -> None:
    """Both ends of a connection between two emulated nodes report the algorithm, whichever way
    the kernel let it be set (on this kind of host: cubic by route, reno by sysctl)."""
    if algorithm not in emulate.congestion_controls("available"):
        pytest.skip(f"{algorithm} is not loaded in this kernel")
    prefix = f"pl{os.getpid()}"
    net = emulate.EmulatedNetwork(
        build_network("uniform", 2, mbps=100, latency_ms=0.0), prefix=prefix,
        tcp_congestion=algorithm,
    )  # fmt: skip
    net.up()
    try:
        server = subprocess.Popen(
            [*net.exec_prefix(1), sys.executable, "-c", PROBE, net.addresses[1]],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = subprocess.run(
            [*net.exec_prefix(0), sys.executable, "-c", CLIENT, net.addresses[1]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == algorithm
        assert server.communicate(timeout=30)[0].strip() == algorithm
        allowed = algorithm in emulate.congestion_controls("allowed")
        assert net.describe()["tcp_congestion"] == algorithm
        assert net.describe()["tcp_congestion_set"] == ("sysctl" if allowed else "route")
    finally:
        net.down()
    assert _ours(f"{prefix}-") == []
