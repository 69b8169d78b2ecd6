"""``peerlearn deploy``: every node as its own process on this machine, then one run directory.

The launcher starts one ``peerlearn node`` subprocess per node, waits until all of them have
built their setup and bound their sockets (ready files in a sync folder), writes a start time
slightly in the future that all of them wait for, and waits for them to stop. Then ``merge_run``
turns the per-node files into the same run directory the simulator writes, with wall-clock
seconds since the common start in ``time_s``, so simulated and deployed runs can be compared.
Ctrl-C stops every node cleanly and keeps what they measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from peerlearn.config import ExperimentConfig, dump_config
from peerlearn.deploy.emulate import (
    EmulatedNetwork,
    check_available,
    netem_available,
    network_spec,
    plan_links,
)
from peerlearn.deploy.errors import DeployError
from peerlearn.results.messages import match_deployed, write_messages_csv
from peerlearn.results.metrics import ALL_NODES, MetricsRecorder
from peerlearn.results.outcome import ByteCounters, RunResult
from peerlearn.results.plots import write_plots
from peerlearn.results.rundir import prepare_run_dir
from peerlearn.results.summary import build_summary


def _node_command(
    config: Path, ids: list[int], nodes_dir: Path, sync: Path, hosts: Path | None = None
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "peerlearn.cli",
        "node",
        str(config),
        "--ids",
        ",".join(map(str, ids)),
        "--out",
        str(nodes_dir),
        "--sync-dir",
        str(sync),
        "--parent-pid",
        str(os.getpid()),
        *(["--hosts", str(hosts)] if hosts is not None else []),
    ]


def _signal_all(procs: list[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)


def _stop_all(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGINT (nodes write their results), then SIGKILL whatever is left after ``grace_s``."""
    _signal_all(procs, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_local(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    on_started: Callable[[list[subprocess.Popen]], None] | None = None,
    log: Callable[[str], None] = print,
    emulated: EmulatedNetwork | None = None,
) -> float:
    """Run the nodes of ``cfg`` as subprocesses (``deploy.nodes_per_process`` each; the log of
    a process is named after its first node); returns the common start (epoch seconds).

    With ``emulated``, node i runs in its namespace and listens on its address there (a hosts
    file in the sync folder tells every node where the others are)."""
    config = run_dir / "config.toml"
    nodes_dir = run_dir / "nodes"
    sync = nodes_dir / "sync"
    sync.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    procs: list[subprocess.Popen] = []
    per = cfg.deploy.nodes_per_process
    groups = [list(range(lo, min(lo + per, cfg.nodes))) for lo in range(0, cfg.nodes, per)]
    hosts = None
    if emulated is not None:
        hosts = sync / "hosts"
        hosts.write_text("".join(f"{a} {i}\n" for i, a in enumerate(emulated.addresses)))
    try:
        for ids in groups:
            wrap = emulated.exec_prefix(ids[0]) if emulated is not None else []
            with (nodes_dir / f"node-{ids[0]}.log").open("w") as logf:
                procs.append(
                    subprocess.Popen(
                        wrap + _node_command(config, ids, nodes_dir, sync, hosts),
                        env=env,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C reaches the launcher, which stops them
                    )
                )
        # wait until every node is set up and listening
        deadline = time.monotonic() + cfg.deploy.ready_timeout_s
        while True:
            ready = sum((sync / f"ready-{i}").exists() for i in range(cfg.nodes))
            if ready == cfg.nodes:
                break
            dead = [ids[0] for ids, p in zip(groups, procs, strict=True) if p.poll() is not None]
            if dead:
                tail = (nodes_dir / f"node-{dead[0]}.log").read_text()[-2000:]
                raise DeployError(f"node {dead[0]} exited during set-up:\n{tail}")
            if time.monotonic() > deadline:
                raise DeployError(f"only {ready}/{cfg.nodes} nodes ready after set-up timeout")
            time.sleep(0.05)
        start_at = time.time() + 0.3
        tmp = sync / ".start"
        tmp.write_text(repr(start_at))
        os.replace(tmp, sync / "start")
        log(f"{cfg.nodes} nodes ready; started")
        if on_started is not None:
            on_started(procs)
        hard_stop = start_at + (cfg.stop.virtual_time_s or cfg.deploy.timeout_s) + 30
        while any(p.poll() is None for p in procs):
            if time.time() > hard_stop:
                log("nodes overran the run time; stopping them")
                _stop_all(procs, 5.0)
            time.sleep(0.1)
        return start_at
    except KeyboardInterrupt:
        log("interrupted: stopping every node (results so far are kept)")
        _stop_all(procs, 10.0)
        return float((sync / "start").read_text()) if (sync / "start").exists() else time.time()
    except BaseException:
        _stop_all(procs, 3.0)
        raise


def merge_run(
    cfg: ExperimentConfig, run_dir: Path, *, launcher_wall_s: float | None = None
) -> tuple[dict[str, Any], MetricsRecorder]:
    """Per-node CSV/JSON files in ``run_dir/nodes`` -> metrics.csv, summary.json, plots."""
    nodes_dir = run_dir / "nodes"
    n = cfg.nodes
    rec = MetricsRecorder()
    for i in range(n):
        path = nodes_dir / f"node-{i}.csv"
        if path.exists():
            rec.rows += _read_node_csv(path)
    stats: dict[int, dict[str, Any]] = {}
    for i in range(n):
        path = nodes_dir / f"node-{i}.json"
        if path.exists():
            stats[i] = json.loads(path.read_text())
    _aggregate(rec, cfg)
    rec.rows.sort(key=lambda r: (r[0], r[1]))
    rec.write_csv(run_dir / "metrics.csv")
    unmatched = _merge_message_logs(nodes_dir, n, run_dir) if cfg.eval.log_messages else None

    counters = ByteCounters(n)
    sent = np.zeros(n)
    iters = np.zeros(n, dtype=np.int64)
    for i, s in stats.items():
        sent[i] = s["bytes_sent"]
        counters.data[i] = s["data_bytes"]
        counters.meta[i] = s["meta_bytes"]
        counters.received[i] = s["bytes_received"]
        iters[i] = s["iterations"]
        for src, b in s["received_from"].items():
            counters.delivered[int(src)] += b
    # a node that died left no stats: its last recorded iteration is the best we know
    for _, node, it, _, _ in rec.rows:
        if node >= 0 and node not in stats:
            iters[node] = max(iters[node], it)
    end = max((s["end_s"] for s in stats.values()), default=0.0)
    result = RunResult(
        virtual_time_s=end,
        wall_time_s=end,
        train_wall_s=sum(s["train_wall_s"] for s in stats.values()),
        eval_wall_s=sum(s["eval_wall_s"] for s in stats.values()),
        iterations=iters,
        bytes_sent=sent,
        counters=counters,
        messages_delivered=sum(s["messages_received"] for s in stats.values()),
        messages_dropped=sum(s["messages_dropped"] for s in stats.values()),
        train_batches=sum(s["train_jobs"] for s in stats.values()),
        train_jobs=sum(s["train_jobs"] for s in stats.values()),
        finished_all=len(stats) == n and all(s["finished"] for s in stats.values()),
    )
    summary = build_summary(cfg=cfg, recorder=rec, result=result)
    summary["engine"] = "deploy"
    rejected: Counter[str] = Counter()
    for s in stats.values():
        rejected.update(s["rejected"])
    reasons = Counter(s["stop_reason"] for s in stats.values())
    summary["deploy"] = {
        "run_wall_s": end,
        "launcher_wall_s": launcher_wall_s,
        # no results (killed, crashed before writing) or stopped by an error
        "nodes_failed": sorted(
            (set(range(n)) - set(stats))
            | {i for i, s in stats.items() if s["stop_reason"] == "error"}
        ),
        "stop_reasons": dict(reasons),
        "nodes_stalled": sorted(i for i, s in stats.items() if s["stop_reason"] == "stalled"),
        "messages_sent": sum(s["messages_sent"] for s in stats.values()),
        "messages_dropped_unsent": result.messages_dropped,
        "bytes_dropped_unsent": sum(s["bytes_dropped"] for s in stats.values()),
        "messages_overflow": sum(s["messages_overflow"] for s in stats.values()),
        "messages_rejected": dict(rejected),
        "start_lateness_max_s": max((s["start_lateness_s"] for s in stats.values()), default=0),
        "train_wall_s_per_node_mean": result.train_wall_s / max(len(stats), 1),
    }
    if unmatched is not None:
        summary["deploy"]["messages_log_unmatched"] = unmatched
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_plots(rec, run_dir / "plots", f"{cfg.name}: {cfg.algorithm.name} (deployed)")
    return summary, rec


def _merge_message_logs(nodes_dir: Path, n: int, run_dir: Path) -> int:
    """Nodes' send and receive logs -> messages.csv; returns how many sends found no arrival
    (lost with a node that died, still in flight at the end, or not paired)."""
    sent: dict[int, list] = {}
    received: dict[int, list] = {}
    for i in range(n):
        path = nodes_dir / f"messages-{i}.json"
        if path.exists():
            logs = json.loads(path.read_text())
            sent[i] = [tuple(r) for r in logs["sent"]]
            received[i] = [tuple(r) for r in logs["received"]]
    rows, unmatched = match_deployed(sent, received)
    write_messages_csv(run_dir / "messages.csv", rows)
    return unmatched


def _read_node_csv(path: Path) -> list[tuple[float, int, int, str, float]]:
    """A node's rows; a line cut short by a node killed while writing is skipped."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split(",")
        try:
            t, node, it, metric, value = parts
            rows.append((float(t), int(node), int(it), metric, float(value)))
        except ValueError:
            continue
    return rows


def _aggregate(rec: MetricsRecorder, cfg: ExperimentConfig) -> None:
    """Add node -1 aggregates per evaluation round (round k: times near k * eval.every_s).

    Nodes evaluate independently at (nearly) the same instants; a round aggregates whichever
    nodes reported in it, so a dead node simply stops counting.
    """
    every = cfg.eval.every_s
    rounds: dict[int, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    iters: dict[int, dict[int, int]] = defaultdict(dict)
    times: dict[int, list[float]] = defaultdict(list)
    for t, node, it, metric, value in rec.rows:
        if node < 0 or not (metric.startswith("test_") or metric in ("bytes_sent",)):
            continue
        k = round(t / every)
        rounds[k][metric][node] = value
        iters[k][node] = it
        if metric == "test_loss":
            times[k].append(t)
    for k in sorted(rounds):
        by_metric = rounds[k]
        # the latest snapshot of the round: every node had reached its state by then
        t = max(times[k], default=k * every)
        it_min = min(iters[k].values())
        for metric, per_node in by_metric.items():
            v = np.array(list(per_node.values()), dtype=np.float64)
            if metric == "bytes_sent":
                rec.add(t, ALL_NODES, it_min, "bytes_sent_mean", float(v.mean()))
                continue
            v = v[~np.isnan(v)] if not np.isnan(v).all() else v
            rec.add_spread(t, it_min, metric, v)
        rec.add(t, ALL_NODES, it_min, "iteration_mean", float(np.mean(list(iters[k].values()))))


def deploy_experiment(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """``peerlearn deploy``: run all nodes here, merge, return (run dir, summary)."""
    cfg = cfg.model_copy(update={"engine": "deploy"})
    if cfg.deploy.emulate:  # before anything is created
        check_available()
        if cfg.deploy.nodes_per_process != 1:
            raise DeployError("--emulate needs deploy.nodes_per_process = 1 (a namespace per node)")
        plan_links(network_spec(cfg), [""] * cfg.nodes, netem=False)  # refuses shared links
        if cfg.deploy.emulate_latency == "netem" and not netem_available():
            raise DeployError("deploy.emulate_latency = netem but this kernel has no sch_netem")
    run_dir = prepare_run_dir(out, cfg.name, overwrite=overwrite)
    (run_dir / "config.toml").write_text(dump_config(cfg))

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    if not cfg.deploy.emulate:
        t0 = time.monotonic()
        launch_local(cfg, run_dir, log=log)
        summary, _ = merge_run(cfg, run_dir, launcher_wall_s=time.monotonic() - t0)
        return run_dir, summary
    return _deploy_emulated(cfg, run_dir, log)


def _deploy_emulated(
    cfg: ExperimentConfig, run_dir: Path, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """``deploy --emulate``: namespaces up, nodes in them, namespaces down whatever happens.

    SIGTERM and SIGHUP act like Ctrl-C (nodes stop and write, results are merged), and the
    ``finally`` removes the namespaces; ``atexit`` is the fallback for other exits. Only SIGKILL
    leaves them behind, for ``peerlearn emulate-cleanup``.
    """
    spec = network_spec(cfg)
    net = EmulatedNetwork(
        spec, subnet=cfg.deploy.emulate_subnet, latency=cfg.deploy.emulate_latency
    )

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        t0 = time.monotonic()
        plan = net.up()
        for note in plan.notes:
            log(f"emulation: {note}")
        log(f"emulation: {cfg.nodes} namespaces {net.prefix}-*, {spec.description}")
        (run_dir / "emulation.json").write_text(json.dumps(net.describe(), indent=2) + "\n")
        # the nodes read the resolved latency mode (transport: they hold frames themselves)
        deploy = cfg.deploy.model_copy(update={"emulate_latency": net.latency})
        cfg = cfg.model_copy(update={"deploy": deploy})
        (run_dir / "config.toml").write_text(dump_config(cfg))
        launch_local(cfg, run_dir, log=log, emulated=net)
        summary, _ = merge_run(cfg, run_dir, launcher_wall_s=time.monotonic() - t0)
        summary["deploy"]["emulation"] = net.describe()
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return run_dir, summary
    finally:
        net.down()
        for s, handler in old.items():
            signal.signal(s, handler)
