"""EL-Oracle, EL-Local, gossip and dynamic topologies under both engines: checkpoint and resume in
the simulator, and a short loopback deployment that must agree with the simulator on who talks to
whom in every round."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerlearn.algorithms.epidemic import local_schedule
from peerlearn.config import load_config
from peerlearn.deploy.launcher import deploy_experiment
from peerlearn.experiment import build_setup
from peerlearn.network.dynamic import round_neighbors
from peerlearn.results.messages import read_messages_csv
from peerlearn.sim.engine import Simulator
from tests import test_checkpoint as ck
from tests.test_deploy_node import free_port_base
from tests.test_deploy_run import _env

VARIANTS = {
    "el_oracle": ["algorithm.s=3"],
    "el_local": ["algorithm.s=2"],
    "gossip": ["eval.log_messages=true"],
    "gossip_average": ["algorithm.merge=average"],
    "dpsgd_dynamic": ["topology.dynamic=true"],
    "jwins_dynamic": ["topology.dynamic=true"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stop_save_load_continue_gives_identical_metrics(
    variant: str, tmp_path: Path, monkeypatch
) -> None:
    algorithm = variant.split("_")[0] if variant.endswith(("_dynamic", "_average")) else variant
    monkeypatch.setitem(ck.EXTRA, algorithm, VARIANTS[variant])
    ck.test_stop_save_load_continue_gives_identical_metrics(algorithm, tmp_path)


def _round_edges(rows) -> dict[int, set[tuple[int, int]]]:
    out: dict[int, set[tuple[int, int]]] = {}
    for src, dst, it in rows:
        out.setdefault(int(it), set()).add((int(src), int(dst)))
    return out


def _scheduled(variant: str, n: int, seed: int, r: int) -> set[tuple[int, int]]:
    if variant == "el_local":
        targets = local_schedule(n, 2, seed, r)[0]
    else:  # el_oracle (s = 2) and D-PSGD on a dynamic degree-2 graph share the generator
        targets = round_neighbors(n, 2, seed, r)
    return {(i, j) for i in range(n) for j in targets[i]}


DEPLOYED = {
    "el_oracle": ["algorithm.name=el_oracle", "algorithm.s=2"],
    "el_local": ["algorithm.name=el_local", "algorithm.s=2"],
    "gossip": ["algorithm.name=gossip"],
    "dpsgd_dynamic": [
        "algorithm.name=dpsgd",
        "topology.kind=regular",
        "topology.degree=2",
        "topology.dynamic=true",
    ],
}


@pytest.mark.parametrize("variant", list(DEPLOYED))
def test_loopback_deployment_runs_and_agrees_with_the_simulator(
    variant: str, tmp_path: Path, monkeypatch
) -> None:
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    n = 4
    cfg = load_config(
        None,
        [
            "name=deploy-test", f"nodes={n}", "data.dataset=digits", "data.partition=iid",
            "model.hidden=[32]", "train.local_steps=10", "topology.kind=full",
            "network.preset=uniform", "network.stragglers=0", "stop.virtual_time_s=3",
            "eval.every_s=1", "eval.log_messages=true", f"deploy.base_port={free_port_base(n)}",
            f"deploy.nodes_per_process={n}",  # one torch import: seconds on a small machine
            *DEPLOYED[variant],
        ],
    )  # fmt: skip
    run_dir, summary = deploy_experiment(cfg, tmp_path / "run", quiet=True)
    d = summary["deploy"]
    assert d["nodes_failed"] == [] and d["messages_rejected"] == {}
    assert summary["iterations"]["min"] >= 2
    assert summary["final"]["test_acc_mean"] > 0.5
    log = read_messages_csv(run_dir / "messages.csv")
    assert len(log) > 0 and set(log.kind) == {"model"}
    if variant == "gossip":  # one push per finished local training, to another node
        assert (log.src != log.dst).all()
        assert d["messages_sent"] <= sum(summary["iterations"]["per_node"])
        return
    deployed = _round_edges(zip(log.src, log.dst, log.iteration, strict=True))
    sim = Simulator(build_setup(cfg.model_copy(update={"engine": "sim"})))
    sim.run()
    simulated = _round_edges((m[0], m[1], m[3]) for m in sim.message_log)
    # every round both engines completed: the same pushes, and those the schedule names
    done = min(summary["iterations"]["min"], min(p.iteration for p in sim.protocols))
    assert done >= 2
    for r in range(done):
        assert deployed[r] == simulated[r] == _scheduled(variant, n, cfg.seed, r), r
