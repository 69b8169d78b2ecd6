"""One OS process running one or more nodes: ``peerlearn node``.

Every process builds the same ``Setup`` from the same config (datasets, partition, model init and
fragments all derive from the seed), binds its nodes' ROUTERs, says it is ready, waits for the
common start time and runs its nodes until they stop. SIGINT/SIGTERM stop the nodes cleanly: each
writes what it has measured so far. During set-up (before the nodes exist) the default signal
actions apply: SIGTERM ends the process at once, SIGINT raises KeyboardInterrupt.

With ``--parent-pid`` (the launcher), the process watches its parent from the first moment,
before torch is even imported (``lifeline.ParentWatch``): torch, the model and the nodes are
imported lazily, below.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio
import zmq.auth

from peerlearn.config.load import ConfigError
from peerlearn.config.schema import ExperimentConfig
from peerlearn.deploy.lifeline import ParentWatch

if TYPE_CHECKING:
    from peerlearn.deploy.node import Keys, NodeStats


def parse_ids(text: str) -> list[int]:
    """``0,2,5-7`` -> [0, 2, 5, 6, 7]."""
    ids: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            ids += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise ConfigError(f"bad node id list {text!r}; expected e.g. 0,2,5-7") from None
    return ids


def parse_hosts(path: Path, n_nodes: int) -> dict[int, str]:
    """A hosts file: one ``ADDRESS IDS`` per line (``10.0.0.2 0-29``), ``#`` comments.

    Every node id must appear exactly once.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read hosts file {path}: {exc.strerror}") from None
    host_of: dict[int, str] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ConfigError(f"{path}:{lineno}: expected 'ADDRESS IDS', got {line!r}")
        for i in parse_ids(parts[1]):
            if i in host_of or not 0 <= i < n_nodes:
                raise ConfigError(
                    f"{path}:{lineno}: node {i} is repeated or not in 0..{n_nodes - 1}"
                )
            host_of[i] = parts[0]
    missing = sorted(set(range(n_nodes)) - set(host_of))
    if missing:
        raise ConfigError(f"{path}: nodes {missing[:10]} have no host")
    return host_of


def check_port_range(cfg: ExperimentConfig) -> None:
    """Node i listens on deploy.base_port + i: the last one must be a port (<= 65535)."""
    base = cfg.deploy.base_port
    if base + cfg.nodes - 1 > 65535:
        raise ConfigError(
            f"deploy.base_port {base} + nodes {cfg.nodes} needs ports up to "
            f"{base + cfg.nodes - 1}, beyond 65535; set deploy.base_port <= {65536 - cfg.nodes}"
        )


def endpoints(cfg: ExperimentConfig, hosts: dict[int, str] | None) -> dict[int, str]:
    """Node -> ``tcp://address:port`` with port = deploy.base_port + node id."""
    check_port_range(cfg)
    base = cfg.deploy.base_port
    return {
        i: f"tcp://{hosts[i] if hosts else cfg.deploy.host}:{base + i}" for i in range(cfg.nodes)
    }


def load_keys(keys_dir: Path, node: int, n_nodes: int) -> tuple[Keys, dict[str, int]]:
    """A node's CURVE pair and every node's public key, from ``peerlearn keys`` files."""
    from peerlearn.deploy.node import Keys

    try:
        public, secret = zmq.auth.load_certificate(keys_dir / f"node-{node}.key_secret")
        peers = {
            j: zmq.auth.load_certificate(keys_dir / f"node-{j}.key")[0] for j in range(n_nodes)
        }
    except (OSError, ValueError) as exc:
        raise ConfigError(f"deploy.keys_dir {keys_dir}: {exc}") from None
    if secret is None:
        raise ConfigError(f"deploy.keys_dir: node-{node}.key_secret holds no secret key")
    return Keys(public, secret, peers), {k.decode(): j for j, k in peers.items()}


def generate_keys(keys_dir: Path, n_nodes: int, *, overwrite: bool = False) -> None:
    """One CURVE key pair per node (secret keys 0600); see ``peerlearn.deploy.keys``."""
    from peerlearn.deploy import keys

    keys.generate_keys(keys_dir, n_nodes, overwrite=overwrite)


async def _wait_start(
    start_at: float | None, sync_dir: Path | None, ids: list[int], stopped: asyncio.Event
) -> float | None:
    """Announce readiness (sync_dir/ready-<id>) and return the common start (epoch seconds),
    or None if the nodes were stopped (signal, orphaned) before it."""
    if sync_dir is not None:
        for i in ids:
            (sync_dir / f"ready-{i}").touch()
        start_file = sync_dir / "start"
        while start_at is None:
            if stopped.is_set():
                return None
            if start_file.exists():
                start_at = float(start_file.read_text())
            else:
                await asyncio.sleep(0.02)
    if start_at is None:
        start_at = time.time()
    delay = start_at - time.time()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), delay)
    return None if stopped.is_set() else start_at


def _size_for_sockets(ctx: zmq.Context, sockets: int) -> None:
    """Room for every node's ROUTER and a DEALER per peer: ZeroMQ allows 1023 sockets per
    context by default, and each connection also takes file descriptors (raised to the hard
    limit where the soft one is lower than needed)."""
    ctx.set(zmq.MAX_SOCKETS, max(ctx.get(zmq.MAX_SOCKETS), sockets + 64))
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 3 * sockets + 256  # a socket's mailbox, its connection, the peer's accepted one
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ImportError, ValueError, OSError):
        pass  # not Unix, or not allowed: ZeroMQ reports "Too many open files" if it matters


async def _run(
    cfg: ExperimentConfig,
    ids: list[int],
    hosts: dict[int, str] | None,
    out_dir: Path,
    start_at: float | None,
    sync_dir: Path | None,
    watch: ParentWatch | None,
) -> list[NodeStats]:
    from peerlearn.deploy.decoder import DecoderProcess
    from peerlearn.deploy.node import NodeRuntime
    from peerlearn.experiment import build_setup

    setup = build_setup(cfg)
    ctx = zmq.asyncio.Context()
    _size_for_sockets(ctx, len(ids) * (cfg.nodes + 1))
    auth = None
    keys_dir = Path(cfg.deploy.keys_dir) if cfg.deploy.keys_dir else None
    if keys_dir is not None:
        from zmq.auth.asyncio import AsyncioAuthenticator

        # only clients whose public key is in keys_dir get through the CURVE handshake
        auth = AsyncioAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(keys_dir))
    eps = endpoints(cfg, hosts)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
    decoder = DecoderProcess()  # one fpzip decoder child for all nodes here, started if used
    runtimes: list[NodeRuntime] = []
    try:
        for i in ids:
            keys, pub = load_keys(keys_dir, i, cfg.nodes) if keys_dir else (None, None)
            bind = cfg.deploy.bind or eps[i].split("//", 1)[1].rsplit(":", 1)[0]
            rt = NodeRuntime(
                setup,
                i,
                ctx=ctx,
                endpoints=eps,
                bind=bind,
                start_at=0.0,
                out_dir=out_dir,
                executor=executor,
                keys=keys,
                public_to_node=pub,
                decoder=decoder,
            )
            rt.warm_up()
            rt.open_sockets()
            runtimes.append(rt)
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        def stop_all(reason: str) -> None:
            stopped.set()
            for rt in runtimes:
                rt.stop(reason)

        def on_signal() -> None:  # SIGTERM is also the launcher's death signal (lifeline)
            stop_all("orphaned" if watch is not None and watch.orphaned() else "interrupted")

        # from here on the nodes exist: signals stop them cleanly instead of ending the process
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if watch is not None:
            watch.on_orphan = lambda: loop.call_soon_threadsafe(stop_all, "orphaned")
            if watch.orphaned():
                stop_all("orphaned")
        start = await _wait_start(start_at, sync_dir, ids, stopped)
        if start is None:  # stopped before the common start: nothing was measured
            for rt in runtimes:
                rt.close_sockets()
            return []
        for rt in runtimes:
            rt.start_at = start
        return list(await asyncio.gather(*(rt.run() for rt in runtimes)))
    finally:
        if auth is not None:
            auth.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        decoder.close()
        for rt in runtimes:  # closed already unless set-up failed half-way; closing is idempotent
            rt.close_sockets()
        ctx.term()


def run_node_process(
    cfg: ExperimentConfig,
    ids: list[int],
    *,
    out_dir: Path,
    hosts: dict[int, str] | None = None,
    start_at: float | None = None,
    sync_dir: Path | None = None,
    parent_pid: int | None = None,
) -> list[NodeStats]:
    """Run the given nodes of ``cfg`` in this process until they stop.

    With ``parent_pid``, the process ends when that process is no longer its parent: at once
    during set-up, after a clean stop (reason ``orphaned``) once the nodes run."""
    watch = ParentWatch(parent_pid).start() if parent_pid is not None else None
    bad = [i for i in ids if not 0 <= i < cfg.nodes]
    if bad or not ids:
        raise ConfigError(f"node ids {bad or ids} are not in 0..{cfg.nodes - 1}")
    import torch

    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(cfg, ids, hosts, out_dir, start_at, sync_dir, watch))
