"""Payloads of queued messages kept in a file beyond a memory budget (sim/spill.py).

Spilling changes where a pending payload waits, never what is delivered: a run that spills
every payload gives the same bits as one that keeps them all in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from peerlearn.cli import main
from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import Message
from peerlearn.config import ConfigError, load_config
from peerlearn.experiment import build_setup
from peerlearn.sim.engine import Simulator
from peerlearn.sim.spill import MIN_SPILL_BYTES, PayloadSpill, PendingMessages, SpilledPayload

# stragglers at 2 Mbit/s under Swift and AD-PSGD: backlogs build up; a 64-256-10 MLP (76 KB)
# is above the size below which payloads stay in memory
RUN = [
    "name=spill",
    "nodes=6",
    "data.dataset=digits",
    "data.partition=iid",
    "model.hidden=[256]",
    "train.local_steps=2",
    "network.preset=stragglers",
    "network.stragglers=2",
    "network.fast_mbps=2",
    "stop.virtual_time_s=3",
    "eval.every_s=0.5",
    "eval.test_samples=200",
    "eval.log_messages=true",
]


@pytest.mark.parametrize("algorithm", ["swift", "adpsgd"])
def test_a_run_that_spills_every_payload_gives_the_same_bits(algorithm, tmp_path: Path) -> None:
    args = [a for s in [*RUN, f"algorithm.name={algorithm}"] for a in ("--set", s)]
    kept, spilled = tmp_path / "kept", tmp_path / "spilled"
    assert main(["run", *args, "--out", str(kept), "--quiet"]) == 0
    spill_args = [*args, "--set", "compute.spill_after_mb=0"]
    assert main(["run", *spill_args, "--out", str(spilled), "--quiet"]) == 0
    for name in ("metrics.csv", "messages.csv"):
        assert (spilled / name).read_bytes() == (kept / name).read_bytes(), name
    s_kept = json.loads((kept / "summary.json").read_text())
    s_spilled = json.loads((spilled / "summary.json").read_text())
    assert "spilled" not in s_kept["profile"]
    info = s_spilled["profile"]["spilled"]
    # every send was spilled; each snapshot once although it went to several peers
    assert info["payloads"] > 0 and info["mb_written"] > 0.076 * info["payloads"]
    assert 0 < info["reads"] <= s_spilled["messages"]["delivered"]
    assert s_spilled["bytes"] == s_kept["bytes"]


def test_spilling_starts_only_beyond_the_budget() -> None:
    base = [*RUN, "algorithm.name=swift"]
    never = Simulator(build_setup(load_config(None, base)))
    never.run()
    assert never.spill.payloads == 0  # the default budget (4 GB) is never reached here
    cfg = load_config(None, [*base, "compute.spill_after_mb=1"])
    sim = Simulator(build_setup(cfg))
    sim.run()
    # 1 MB of pending messages is a dozen models: some sends spill, the early ones do not
    assert 0 < sim.spill.payloads < never.messages_delivered + len(never.messages)


def test_pending_messages_keep_the_sum_of_their_sizes() -> None:
    pending = PendingMessages()
    msg = Message(0, 1, "model", 0, FragmentPayload.of_array(0, np.zeros(4, np.float32)))
    pending[1] = (msg, (100, 90, 10))
    pending[2] = (msg, (50, 45, 5))
    assert pending.nbytes == 150
    pending[2] = (msg, (70, 60, 10))  # replaced, not added
    assert pending.nbytes == 170
    assert pending.pop(1)[1][0] == 100 and pending.nbytes == 70
    assert pending.pop(1, None) is None and pending.nbytes == 70
    del pending[2]
    assert pending.nbytes == 0 and not pending
    with pytest.raises(KeyError):
        pending.pop(3)


def test_a_spilled_payload_comes_back_bit_for_bit_and_shared_ones_are_written_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    values = np.random.default_rng(1).standard_normal(MIN_SPILL_BYTES // 4).astype(np.float32)
    big = FragmentPayload.of_array(3, values)
    small = FragmentPayload.of_array(0, values[:10])
    burst = [Message(0, d, "fragment", 7, big) for d in (1, 2, 3)]
    burst.append(Message(0, 4, "fragment", 7, small))
    spill = PayloadSpill(0)
    spill.spill_burst(burst)
    assert all(type(m.payload) is SpilledPayload for m in burst[:3])
    assert burst[3].payload is small  # under MIN_SPILL_BYTES: stays in memory
    assert spill.payloads == 1 and burst[0].payload is burst[2].payload
    assert burst[0].payload.nbytes == big.nbytes
    back = spill.get(burst[1].payload)
    assert back.fragment == 3 and back.array().tobytes() == values.tobytes()
    assert os.listdir(tmp_path) == []  # the file is unlinked from the start
    spill.close()
    with pytest.raises(RuntimeError):
        PayloadSpill(1).get(SpilledPayload(0, 1, 1))


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="spill_after_mb"):
        load_config(None, ["compute.spill_after_mb=-1"])
    with pytest.raises(ValueError, match="budget"):
        PayloadSpill(float("nan"))


def test_a_run_that_would_take_the_disks_reserve_stops_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import peerlearn.sim.spill as spill_module

    # keep everything the disk has free: the first spilled payload is refused
    monkeypatch.setattr(spill_module, "default_reserve", lambda total: total)
    args = [a for s in [*RUN, "algorithm.name=swift"] for a in ("--set", s)]
    spill_all = ["--set", "compute.spill_after_mb=0"]
    code = main(["run", *args, *spill_all, "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "queued messages need more disk" in err and "TMPDIR" in err
    assert "Traceback" not in err


def test_the_reserve_is_checked_again_after_every_256_mb(monkeypatch: pytest.MonkeyPatch) -> None:
    from peerlearn.sim.errors import SpillError

    spill = PayloadSpill(0, reserve=0)
    big = FragmentPayload.of_array(0, np.zeros(MIN_SPILL_BYTES // 4, np.float32))
    checks = []
    real = spill._check_space
    monkeypatch.setattr(spill, "_check_space", lambda need: (checks.append(need), real(need)))
    for _ in range(5):
        spill.put(big)
    assert len(checks) == 1  # 5 x 64 KB: within the first 256 MB
    spill.reserve = 2**62  # more than any disk: the next check refuses
    spill._room = 0
    with pytest.raises(SpillError, match="more disk"):
        spill.put(big)
    spill.close()
