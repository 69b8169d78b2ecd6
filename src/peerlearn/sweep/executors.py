"""Where the runs of a sweep execute: a local process pool (default) or a Ray cluster.

Both take (key, config_toml) tasks and yield (key, result) as runs finish, result being what
``worker.execute_run`` returns; a crashed worker becomes a failed result, never an exception.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from peerlearn.config.load import ConfigError
from peerlearn.sweep.worker import execute_run, limit_threads

Task = tuple[str, str]  # (key, config_toml)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LocalExecutor:
    """``jobs`` worker processes (spawned: no state inherited from the driver); each run uses
    max(1, cores // jobs) torch threads."""

    def __init__(self, jobs: int, threads: int | None = None) -> None:
        self.jobs = max(1, jobs)
        self.threads = threads or max(1, usable_cores() // self.jobs)
        self.running = 0
        self.where = (
            f"{self.jobs} local process{'es' if self.jobs > 1 else ''}, "
            f"{self.threads} thread{'s' if self.threads > 1 else ''} each"
        )

    def map(self, tasks: list[Task]) -> Iterator[tuple[str, dict[str, Any]]]:
        if not tasks:
            return
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            max_workers=min(self.jobs, len(tasks)),
            mp_context=ctx,
            initializer=limit_threads,
            initargs=(self.threads,),
        )
        try:
            pending = {pool.submit(execute_run, toml, self.threads): key for key, toml in tasks}
            while pending:
                self.running = min(self.jobs, len(pending))
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as exc:  # the worker process died (killed, out of memory)
                        result = {"ok": False, "error": f"worker failed: {exc!r}"}
                    yield key, result
            self.running = 0
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """One Ray task per run, asking for ``resources`` (num_cpus, num_gpus, memory); results come
    back to the driver, which writes them. ``address``: "auto" (a running cluster, else a local
    one), "local" (always a new local one) or "ray://HOST:10001" / "HOST:6379"."""

    def __init__(
        self, address: str, resources: dict[str, float] | None = None, threads: int | None = None
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs the ray package: pip install 'peerlearn[ray]'") from None
        self.ray = ray
        self.resources = {"num_cpus": 1.0, **(resources or {})}
        self.threads = threads or max(1, int(self.resources["num_cpus"]))
        self.running = 0
        self._started = False
        if not ray.is_initialized():
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._started = True
        self.where = f"Ray ({address}), {self.resources} per run"

    def map(self, tasks: list[Task]) -> Iterator[tuple[str, dict[str, Any]]]:
        ray = self.ray
        opts = {k: v for k, v in self.resources.items() if k in ("num_cpus", "num_gpus", "memory")}
        remote = ray.remote(max_retries=0, **opts)(execute_run)
        pending = {remote.remote(toml, self.threads): key for key, toml in tasks}
        capacity = ray.cluster_resources().get("CPU", 1) / max(opts.get("num_cpus", 1), 1e-9)
        while pending:
            self.running = int(min(len(pending), max(1, capacity)))
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the worker died, or the task could not run
                    result = {"ok": False, "error": f"ray task failed: {exc!r}"}
                yield key, result
        self.running = 0

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
