"""``deploy.segmentation_offload``: GSO/TSO/GRO off on the emulator's veths.

The commands are checked with the command runner replaced; no namespace is created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peerlearn.cli import main
from peerlearn.config import ConfigError, dump_config, load_config
from peerlearn.deploy import emulate
from peerlearn.deploy.errors import DeployError
from peerlearn.network.presets import build_network
from tests.test_deploy_congestion import FakeRun

#: what `ethtool -k` prints for a veth once the three are off (abridged)
OFF = """Features for eth0:
tcp-segmentation-offload: off
\ttx-tcp-segmentation: off
generic-segmentation-offload: off
generic-receive-offload: off
large-receive-offload: off [fixed]
"""
SET = ["gso", "off", "tso", "off", "gro", "off"]


def test_offload_off_sets_and_reads_back(monkeypatch) -> None:
    run = FakeRun({"ethtool -k": OFF})
    monkeypatch.setattr(emulate, "_run", run)
    emulate.offload_off("pl7-br", "v3")
    assert run.calls == [
        ["ip", "netns", "exec", "pl7-br", "ethtool", "-K", "v3", *SET],
        ["ip", "netns", "exec", "pl7-br", "ethtool", "-k", "v3"],
    ]


def test_a_feature_still_on_is_an_error(monkeypatch) -> None:
    still = OFF.replace("generic-segmentation-offload: off", "generic-segmentation-offload: on")
    monkeypatch.setattr(emulate, "_run", FakeRun({"ethtool -k": still}))
    with pytest.raises(DeployError, match="eth0 in pl7-0: ethtool still reads generic-seg"):
        emulate.offload_off("pl7-0", "eth0")


def _up(monkeypatch, setting: str) -> FakeRun:
    run = FakeRun({"ethtool -k": OFF})
    monkeypatch.setattr(emulate, "_run", run)
    monkeypatch.setattr(emulate, "check_available", lambda: None)
    monkeypatch.setattr(emulate.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(emulate.atexit, "register", lambda f: None)
    spec = build_network("uniform", 3, mbps=10, latency_ms=0.0)
    net = emulate.EmulatedNetwork(spec, prefix="pl7", latency="off", segmentation_offload=setting)
    net.up()
    assert net.describe()["segmentation_offload"] == setting
    return run


def test_up_turns_offload_off_on_both_ends_of_every_veth(monkeypatch) -> None:
    run = _up(monkeypatch, "off")
    set_calls = [call for call in run.calls if "-K" in call]
    assert set_calls == [
        ["ip", "netns", "exec", ns, "ethtool", "-K", dev, *SET]
        for i in range(3)
        for ns, dev in ((f"pl7-{i}", "eth0"), ("pl7-br", f"v{i}"))
    ]
    # each node's end is set once it is up, before its shaper is installed
    first_tc = next(k for k, call in enumerate(run.calls) if call[0] == "tc")
    assert (
        run.calls.index(["ip", "netns", "exec", "pl7-0", "ethtool", "-K", "eth0", *SET]) < first_tc
    )


def test_up_at_system_runs_no_ethtool(monkeypatch) -> None:
    run = _up(monkeypatch, "system")
    assert not any("ethtool" in call for call in run.calls)


def test_missing_ethtool_refused_before_anything_is_made(monkeypatch) -> None:
    monkeypatch.setattr(emulate.shutil, "which", lambda tool: None)
    emulate.check_offload("system")  # needs nothing
    with pytest.raises(DeployError, match="needs ethtool"):
        emulate.check_offload("off")


def test_config_and_cli(tmp_path: Path, capsys) -> None:
    assert "segmentation_offload" not in dump_config(load_config(None, []))
    cfg = load_config(None, ["deploy.segmentation_offload=off"])
    assert 'segmentation_offload = "off"' in dump_config(cfg)
    with pytest.raises(ConfigError):
        load_config(None, ["deploy.segmentation_offload=on"])
    out = tmp_path / "r"
    args = ["deploy", "--set", "nodes=3", "--set", "deploy.segmentation_offload=off"]
    assert main([*args, "--out", str(out)]) == 2  # no --emulate
    err = capsys.readouterr().err.strip()
    assert "needs --emulate" in err and len(err.splitlines()) == 1
    assert not out.exists()
