"""A small-model simulation alone and beside a busy process, old thread default vs new.

The old default used torch's thread count (every core) with OpenMP's default wait policy; the new
one is ``compute.threads = "auto"`` with ``OMP_WAIT_POLICY=PASSIVE`` (what ``peerlearn`` sets at
start). Each measurement runs the quickstart (digits, 16 nodes, 64-unit MLP) for a few virtual
seconds in a fresh process; "loaded" starts a spinning Python process first (and kills it after).
Prints each wall time and the slowdown ratio loaded / alone for both settings; settings and
conditions alternate so that drifting machine load hits both alike.

    python benchmarks/threads_under_load.py [--virtual-s 6] [--rounds 2] [--json out.json]
    python benchmarks/threads_under_load.py --crossover   # 1 vs all threads, by model size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import sys, time
from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.sim.engine import Simulator
import torch
overrides = sys.argv[1:]
sim = Simulator(build_setup(load_config(None, overrides)))
t0 = time.perf_counter()
sim.run()
print(time.perf_counter() - t0, sim.threads, torch.get_num_threads())
"""

SPIN = "while True: pass"


def settings(cores: int) -> dict[str, tuple[dict[str, str], list[str]]]:
    old_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    new_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return {
        "old": (old_env, [f"compute.threads={cores}"]),
        "new": (new_env, ["compute.threads=auto"]),
    }


def run_child(env: dict[str, str], overrides: list[str], timeout: float) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    wall, threads, _ = out.stdout.split()
    return float(wall), int(threads)


def measure(args: argparse.Namespace) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = [f"stop.virtual_time_s={args.virtual_s}", *args.set]
    table: dict[str, dict[str, list[float]]] = {
        s: {"alone": [], "loaded": []} for s in ("old", "new")
    }
    used: dict[str, int] = {}
    for _ in range(args.rounds):
        for condition in ("alone", "loaded"):
            for name, (env, extra) in settings(cores).items():
                spinner = None
                if condition == "loaded":
                    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
                    time.sleep(0.3)
                try:
                    wall, threads = run_child(env, [*base, *extra], args.timeout)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                table[name][condition].append(wall)
                used[name] = threads
                print(f"{name:<4} {condition:<7} threads={threads} wall {wall:7.2f} s", flush=True)
    result = {"cores": cores, "load_average": os.getloadavg(), "threads": used, "runs": table}
    for name in ("old", "new"):
        alone, loaded = min(table[name]["alone"]), min(table[name]["loaded"])
        result[f"{name}_slowdown"] = loaded / alone
        print(
            f"{name}: alone {alone:.2f} s, beside a busy process {loaded:.2f} s, "
            f"slowdown {loaded / alone:.2f}x (threads={used[name]})"
        )
    print(f"load average at the end: {os.getloadavg()}")
    return result


def crossover(args: argparse.Namespace) -> dict:
    """Seconds per training step of one job's batch of 8, 1 thread vs all, by model size."""
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from common import best_time
    from peerlearn.compute import BatchedTrainer, TrainJob
    from peerlearn.compute.threads import forward_flops_per_sample
    from peerlearn.models import build_model

    cores = torch.get_num_threads()
    models = [
        ("mlp", (64,), {"hidden": (64,)}),
        ("mlp", (3072,), {"hidden": (64,)}),
        ("mlp", (3072,), {"hidden": (1024,)}),
        ("mlp", (3072,), {"hidden": (2048, 1024)}),
        ("gn_lenet", (3, 32, 32), {}),
    ]
    out = []
    for name, shape, kw in models[: args.models]:
        spec = build_model(name, input_shape=shape, num_classes=10, info={}, seed=1, **kw)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(512, *shape, generator=g), torch.randint(0, 10, (512,), generator=g)
        flops = forward_flops_per_sample(spec, x[:1])
        jobs = [
            TrainJob(spec.init_vector(), torch.randint(0, 512, (10, 8), generator=g))
            for _ in range(args.jobs)
        ]
        trainer = BatchedTrainer(spec, x, y, lr=0.01)
        times = {}
        for _ in range(args.rounds):  # alternate
            for n in (1, cores):
                torch.set_num_threads(n)
                t = best_time(lambda tr=trainer, js=jobs: tr.run(js), 3) / 10
                times[n] = min(times.get(n, float("inf")), t)
        torch.set_num_threads(cores)
        row = {
            "model": f"{name} {shape} {kw}",
            "forward_flops_per_step": flops * 8 if flops else None,
            "step_s": times,
        }
        out.append(row)
        print(
            f"{row['model']:<45} fwd FLOP/step {row['forward_flops_per_step']:.3g}  "
            + "  ".join(f"{n} thr {t * 1e3:.3f} ms" for n, t in times.items())
            + f"  ({cores} vs 1: {times[1] / times[cores]:.2f}x)",
            flush=True,
        )
    print(f"load average: {os.getloadavg()}")
    return {"jobs": args.jobs, "rows": out}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--virtual-s", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--set", action="append", default=[], help="extra config overrides")
    p.add_argument("--crossover", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="--crossover: jobs per batched call")
    p.add_argument("--models", type=int, default=5, help="--crossover: the first N models")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = crossover(args) if args.crossover else measure(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
