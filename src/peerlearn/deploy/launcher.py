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
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from peerlearn.config import ExperimentConfig, dump_config
from peerlearn.deploy import lifeline
from peerlearn.deploy.capacity import plan_processes
from peerlearn.deploy.emulate import (
    EmulatedNetwork,
    check_available,
    check_congestion,
    check_offload,
    netem_available,
    network_spec,
    plan_links,
)
from peerlearn.deploy.errors import DeployError
from peerlearn.deploy.process import check_port_range
from peerlearn.results.atomic import write_atomic
from peerlearn.results.messages import match_deployed, write_messages_csv
from peerlearn.results.metrics import ALL_NODES, MetricsRecorder
from peerlearn.results.outcome import ByteCounters, RunResult
from peerlearn.results.plots import write_plots
from peerlearn.results.rundir import prepare_run_dir
from peerlearn.results.summary import build_summary, deploy_profile, dumps


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


def _kill_group(pgid: int | None, procs: list[subprocess.Popen]) -> None:
    """SIGKILL the node processes' group (also anything they started) and reap them.

    Only while one of them is still unreaped: until then the group's id cannot be reused, so
    the signal cannot reach anyone else's processes."""
    if pgid is not None and any(p.returncode is None for p in procs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


class _Interrupt(KeyboardInterrupt):
    """SIGTERM or SIGHUP of the launcher, handled like Ctrl-C."""


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (what ``timeout`` and ``kill`` send) and SIGHUP act like Ctrl-C while inside:
    the nodes are stopped and what they measured is merged. Only in the main thread (the only
    one Python delivers signals to); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _start_process(
    cmd: list[str], env: dict[str, str], log_path: Path, pgid: int | None
) -> subprocess.Popen:
    """One node process: in the nodes' process group (a new one, led by the first), with the
    launcher's death as its own (``lifeline.preexec``: PR_SET_PDEATHSIG, then a parent check)."""
    with log_path.open("w") as logf:
        return subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            # not the launcher's group: Ctrl-C reaches the launcher only, which stops them
            process_group=0 if pgid is None else pgid,
            preexec_fn=lifeline.preexec(os.getpid()),
        )


def launch_local(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    on_started: Callable[[list[subprocess.Popen]], None] | None = None,
    log: Callable[[str], None] = print,
    emulated: EmulatedNetwork | None = None,
    phases: dict[str, float] | None = None,
) -> float:
    """Run the nodes of ``cfg`` as subprocesses (``deploy.nodes_per_process`` each, planned by
    ``plan_processes`` when unset; the log of a process is named after its first node);
    returns the common start (epoch seconds).

    Every node process is in one process group (``nodes/sync/pids``: the group, then one
    ``PID FIRST_NODE`` line per process), dies with the launcher (see ``lifeline``), and is
    killed on the way out whatever happens. Ctrl-C (KeyboardInterrupt, or SIGTERM/SIGHUP inside
    ``signals_as_interrupt``) stops the nodes cleanly first.

    With ``emulated``, node i runs in its namespace and listens on its address there (a hosts
    file in the sync folder tells every node where the others are).

    ``phases`` gets the launcher's own monotonic clock readings: ``t_spawn`` (first process
    started), ``t_start`` (the common start), ``t_end`` (last process gone)."""
    phases = {} if phases is None else phases
    config = run_dir / "config.toml"
    nodes_dir = run_dir / "nodes"
    sync = nodes_dir / "sync"
    sync.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    procs: list[subprocess.Popen] = []
    pgid: int | None = None
    per = cfg.deploy.nodes_per_process or plan_processes(cfg).nodes_per_process
    groups = [list(range(lo, min(lo + per, cfg.nodes))) for lo in range(0, cfg.nodes, per)]
    hosts = None
    if emulated is not None:
        hosts = sync / "hosts"
        hosts.write_text("".join(f"{a} {i}\n" for i, a in enumerate(emulated.addresses)))
    pids = (sync / "pids").open("w")
    phases["t_spawn"] = time.monotonic()
    try:
        for ids in groups:
            wrap = emulated.exec_prefix(ids[0]) if emulated is not None else []
            cmd = wrap + _node_command(config, ids, nodes_dir, sync, hosts)
            try:
                proc = _start_process(cmd, env, nodes_dir / f"node-{ids[0]}.log", pgid)
            except (PermissionError, ProcessLookupError):  # setpgid: the whole group is gone
                raise DeployError(_died_in_setup(groups, procs, nodes_dir)) from None
            procs.append(proc)
            if pgid is None:
                pgid = proc.pid
                pids.write(f"group {pgid}\n")
            pids.write(f"{proc.pid} {ids[0]}\n")
            pids.flush()
        pids.close()
        # wait until every node is set up and listening
        deadline = time.monotonic() + cfg.deploy.ready_timeout_s
        while True:
            ready = sum((sync / f"ready-{i}").exists() for i in range(cfg.nodes))
            if ready == cfg.nodes:
                break
            if any(p.poll() is not None for p in procs):
                raise DeployError(_died_in_setup(groups, procs, nodes_dir))
            if time.monotonic() > deadline:
                raise DeployError(f"only {ready}/{cfg.nodes} nodes ready after set-up timeout")
            time.sleep(0.05)
        start_at = time.time() + 0.3
        phases["t_start"] = time.monotonic() + 0.3
        write_atomic(sync / "start", repr(start_at))
        log(f"{cfg.nodes} nodes ready in {len(procs)} processes; started")
        if on_started is not None:
            on_started(procs)
        hard_stop = start_at + (cfg.stop.virtual_time_s or cfg.deploy.timeout_s) + 30
        while any(p.poll() is None for p in procs):
            if time.time() > hard_stop:
                log("nodes overran the run time; stopping them")
                _stop_all(procs, 5.0)
            time.sleep(0.1)
        return start_at
    except KeyboardInterrupt as exc:
        started = (sync / "start").exists()
        what = signal_name(exc)
        log(
            f"{what}: stopping every node (results so far are kept)"
            if started
            else f"{what} during set-up: stopping every node (none had started)"
        )
        _stop_all(procs, 10.0)
        return float((sync / "start").read_text()) if started else time.time()
    except BaseException:
        _stop_all(procs, 3.0)
        raise
    finally:
        pids.close()
        _kill_group(pgid, procs)
        phases["t_end"] = time.monotonic()


def signal_name(exc: BaseException) -> str:
    """``interrupted`` for Ctrl-C, ``SIGTERM``/``SIGHUP`` for those (see signals_as_interrupt)."""
    return str(exc.args[0]) if isinstance(exc, _Interrupt) and exc.args else "interrupted"


def _died_in_setup(groups: list[list[int]], procs: list[subprocess.Popen], nodes_dir: Path) -> str:
    dead = [ids[0] for ids, p in zip(groups, procs, strict=False) if p.poll() is not None]
    first = dead[0] if dead else groups[0][0]
    path = nodes_dir / f"node-{first}.log"
    tail = path.read_text()[-2000:] if path.exists() else ""
    return f"node {first} exited during set-up:\n{tail}"


def merge_run(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    launcher_t0: float | None = None,
    phases: dict[str, float] | None = None,
) -> tuple[dict[str, Any], MetricsRecorder]:
    """Per-node CSV/JSON files in ``run_dir/nodes`` -> metrics.csv, summary.json, plots.

    ``launcher_t0`` (the launcher's ``time.monotonic()`` when it began) and ``phases`` (from
    ``launch_local``) give the profile's phases on the launcher's clock."""
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
        churn=(
            {
                "messages_lost": sum(s.get("messages_lost_churn", 0) for s in stats.values()),
                "bytes_lost": float(sum(s.get("bytes_lost_churn", 0) for s in stats.values())),
                "transitions": sum(s.get("churn_transitions", 0) for s in stats.values()),
            }
            if cfg.churn.enabled
            else None
        ),
    )
    summary = build_summary(cfg=cfg, recorder=rec, result=result)
    summary["engine"] = "deploy"
    rejected: Counter[str] = Counter()
    for s in stats.values():
        rejected.update(s["rejected"])
    reasons = Counter(s["stop_reason"] for s in stats.values())
    write_plots(rec, run_dir / "plots", f"{cfg.name}: {cfg.algorithm.name} (deployed)")
    summary["profile"] = deploy_profile(
        list(stats.values()), phases=phases, launcher_t0=launcher_t0, now=time.monotonic()
    )
    summary["deploy"] = {
        "run_wall_s": end,  # the nodes' clock: the latest end since the common start
        "launcher_wall_s": summary["profile"].get("launcher_wall_s"),
        "nodes_per_process": cfg.deploy.nodes_per_process,
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
    }
    if unmatched is not None:
        summary["deploy"]["messages_log_unmatched"] = unmatched
    (run_dir / "summary.json").write_text(dumps(summary))
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


def check_fits(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> ExperimentConfig:
    """Before anything is started: the ports exist and the run fits this machine's memory.

    Returns ``cfg`` with ``deploy.nodes_per_process`` resolved (chosen when unset); raises
    ConfigError (ports) or CapacityError (memory), one line each."""
    check_port_range(cfg)
    plan = plan_processes(cfg)
    log(f"deploy: {plan.describe()}")
    for note in plan.notes:
        log(f"deploy: warning: {note}")
    deploy = cfg.deploy.model_copy(update={"nodes_per_process": plan.nodes_per_process})
    return cfg.model_copy(update={"deploy": deploy})


def deploy_experiment(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """``peerlearn deploy``: run all nodes here, merge, return (run dir, summary).

    SIGTERM and SIGHUP act like Ctrl-C (see ``signals_as_interrupt``): the nodes stop, what
    they measured is merged."""
    t0 = time.monotonic()
    cfg = cfg.model_copy(update={"engine": "deploy"})

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    if cfg.deploy.tcp_congestion != "system" and not cfg.deploy.emulate:
        raise DeployError(
            f"deploy.tcp_congestion = {cfg.deploy.tcp_congestion!r} needs --emulate (it is set "
            "in each node's namespace; without them it would change the host's); use 'system'"
        )
    if cfg.deploy.segmentation_offload != "system" and not cfg.deploy.emulate:
        raise DeployError(
            f"deploy.segmentation_offload = {cfg.deploy.segmentation_offload!r} needs --emulate "
            "(it is set on the emulator's veths; without them it would change the host's); "
            "use 'system'"
        )
    if cfg.deploy.emulate:  # before anything is created
        check_available()
        check_congestion(cfg.deploy.tcp_congestion)
        check_offload(cfg.deploy.segmentation_offload)
        if cfg.deploy.nodes_per_process not in (None, 1):
            raise DeployError("--emulate needs deploy.nodes_per_process = 1 (a namespace per node)")
        plan_links(network_spec(cfg), [""] * cfg.nodes, netem=False)  # refuses shared links
        if cfg.deploy.emulate_latency == "netem" and not netem_available():
            raise DeployError("deploy.emulate_latency = netem but this kernel has no sch_netem")
    cfg = check_fits(cfg, log)
    run_dir = prepare_run_dir(out, cfg.name, overwrite=overwrite)
    (run_dir / "config.toml").write_text(dump_config(cfg))
    with signals_as_interrupt():
        if not cfg.deploy.emulate:
            phases: dict[str, float] = {}
            launch_local(cfg, run_dir, log=log, phases=phases)
            summary, _ = merge_run(cfg, run_dir, launcher_t0=t0, phases=phases)
            return run_dir, summary
        return _deploy_emulated(cfg, run_dir, log, t0)


def _deploy_emulated(
    cfg: ExperimentConfig, run_dir: Path, log: Callable[[str], None], t0: float
) -> tuple[Path, dict[str, Any]]:
    """``deploy --emulate``: namespaces up, nodes in them, namespaces down whatever happens.

    SIGTERM and SIGHUP act like Ctrl-C (the caller's ``signals_as_interrupt``: nodes stop and
    write, results are merged), and the ``finally`` removes the namespaces; ``atexit`` is the
    fallback for other exits. Only SIGKILL leaves them behind, for ``peerlearn emulate-cleanup``.
    """
    spec = network_spec(cfg)
    net = EmulatedNetwork(
        spec,
        subnet=cfg.deploy.emulate_subnet,
        latency=cfg.deploy.emulate_latency,
        tcp_congestion=cfg.deploy.tcp_congestion,
        segmentation_offload=cfg.deploy.segmentation_offload,
    )
    try:
        plan = net.up()
        for note in plan.notes:
            log(f"emulation: {note}")
        log(f"emulation: {cfg.nodes} namespaces {net.prefix}-*, {spec.description}")
        log(f"emulation: TCP congestion control {net.congestion()} ({net.congestion_set})")
        (run_dir / "emulation.json").write_text(json.dumps(net.describe(), indent=2) + "\n")
        # the nodes read the resolved latency mode (transport: they hold frames themselves)
        deploy = cfg.deploy.model_copy(update={"emulate_latency": net.latency})
        cfg = cfg.model_copy(update={"deploy": deploy})
        (run_dir / "config.toml").write_text(dump_config(cfg))
        phases: dict[str, float] = {}
        launch_local(cfg, run_dir, log=log, emulated=net, phases=phases)
        summary, _ = merge_run(cfg, run_dir, launcher_t0=t0, phases=phases)
        summary["deploy"]["emulation"] = net.describe()
        (run_dir / "summary.json").write_text(dumps(summary))
        return run_dir, summary
    finally:
        net.down()
