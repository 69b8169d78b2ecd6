"""The deploy engine honours a churn trace on loopback (docs/dynamics.md)."""

from __future__ import annotations

import json
from pathlib import Path

from peerlearn.deploy.launcher import deploy_experiment
from peerlearn.results.messages import read_messages_csv
from tests.test_deploy_run import _cfg, _env

LEAVE, REJOIN = 1.0, 2.5


def test_a_node_pauses_and_drops_what_arrives_while_offline(tmp_path: Path, monkeypatch) -> None:
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    trace = tmp_path / "avail.csv"
    trace.write_text(f"time_s,node,online\n{LEAVE},2,0\n{REJOIN},2,1\n")
    cfg = _cfg(3, 4, "eval.log_messages=true", "churn.kind=trace", f"churn.trace={trace}")
    run_dir, summary = deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert summary["deploy"]["nodes_failed"] == []
    stats = {i: json.loads((run_dir / "nodes" / f"node-{i}.json").read_text()) for i in range(3)}
    assert stats[2]["churn_transitions"] == 2 and stats[0]["churn_transitions"] == 0
    # the others' sends to node 2 while it was away were lost, and counted
    assert stats[0]["messages_lost_churn"] + stats[1]["messages_lost_churn"] > 0
    assert summary["churn"]["messages_lost"] == sum(
        s["messages_lost_churn"] for s in stats.values()
    )
    assert summary["churn"]["transitions"] == 2
    # nothing was delivered to node 2 while it was offline (frames are dropped unread)
    log = read_messages_csv(run_dir / "messages.csv")
    to_2 = log.delivered_s[log.dst == 2]
    assert len(to_2) > 0
    assert not ((to_2 > LEAVE + 0.05) & (to_2 < REJOIN - 0.05)).any()
    assert ((to_2 > REJOIN) & (to_2 < 4)).any()  # and it receives again after the rejoin
    # it did not train while away: the training under way at the leave ends, then nothing
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    losses_2 = [float(r[0]) for r in rows if r[1] == "2" and r[3] == "train_loss"]
    assert not [t for t in losses_2 if LEAVE + 0.6 < t < REJOIN - 0.05]
    assert [t for t in losses_2 if t > REJOIN]
