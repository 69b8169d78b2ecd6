"""The full-protocol DivShare/Swift/AD-PSGD repro config, old code against new, side by side.

``run`` mode (default): runs ``configs/repro/divshare_fmnist_s7.toml`` (60 nodes, MLP 784-113-10,
128 steps x batch 8 per iteration) for ``--virtual-s`` seconds through the ``peerlearn run`` CLI,
each run in a fresh process, for DivShare (Ω = 10), Swift and AD-PSGD, with the current code and,
given ``--old-src DIR`` (a ``src`` folder of an older checkout: ``git archive main src | tar -x
-C /tmp/old``), with the old code, old and new alternating so both see the same machine load.
Prints wall, training, engine and evaluation seconds from each run's ``summary.json``, the
new / old ratios, and fails unless old and new wrote byte-identical ``metrics.csv`` files.

``train`` mode: times only the trainer on 60 jobs of ``--steps`` steps of the repro MLP (random
data of Fashion-MNIST's shape), for each ``--chunks`` x ``--threads``, old against new (fresh
processes, alternating), and checks that every variant returns the same bytes as old's first.

``flows`` mode: times only ``sim.flows.max_min_rates`` on flow sets of this size, old against
new in one process: recorded from a short run of the config (``--record``, DivShare) or
synthetic (60 nodes, the ``divshare_60n7cs5`` capacities, up to ``--max-flows`` random pairs),
and checks that both return the same floats.

    PEERLEARN_DATA=/work/shared/data python benchmarks/repro_speed.py \
        [--virtual-s 10] [--rounds 1] [--algorithms divshare swift adpsgd] [--old-src /tmp/old/src]
    python benchmarks/repro_speed.py --mode train --old-src /tmp/old/src [--chunks 16 60 4]
    python benchmarks/repro_speed.py --mode flows --old-src /tmp/old/src [--record 3]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "repro" / "divshare_fmnist_s7.toml"
CLI = "import sys; from peerlearn.cli import main; sys.exit(main())"


def run_once(src: str | None, algo: str, virtual_s: float, out: Path, extra: list[str]) -> dict:
    """One ``peerlearn run`` of the repro config in a fresh process; its profile and digest."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    sets = [f"stop.virtual_time_s={virtual_s}", f"algorithm.name={algo}", *extra]
    cmd = [sys.executable, "-c", CLI, "run", str(CONFIG), "--out", str(out), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    process_s = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    prof = summary["profile"]
    metrics = (out / "metrics.csv").read_bytes()
    return {
        "process_s": process_s,
        "wall_s": prof["train_wall_s"] + prof["eval_wall_s"] + prof["engine_wall_s"],
        "train_s": prof["train_wall_s"],
        "engine_s": prof["engine_wall_s"],
        "eval_s": prof["eval_wall_s"],
        "threads": summary.get("compute", {}).get("threads"),
        "metrics_sha": hashlib.sha256(metrics).hexdigest()[:16],
        "metrics_rows": metrics.count(b"\n"),
    }


def run_mode(args: argparse.Namespace) -> None:
    versions = {"new": None} if args.old_src is None else {"old": args.old_src, "new": None}
    best: dict[str, dict[str, dict]] = {v: {} for v in versions}
    digests: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory(prefix="repro-speed-") as tmp:
        for _ in range(args.rounds):
            for algo in args.algorithms:
                for version, src in versions.items():
                    r = run_once(src, algo, args.virtual_s, Path(tmp) / version, args.set)
                    digests.setdefault(algo, set()).add(r["metrics_sha"])
                    print(
                        f"{version:<4} {algo:<9} wall {r['wall_s']:7.2f} s = train "
                        f"{r['train_s']:6.2f} + engine {r['engine_s']:6.2f} + eval "
                        f"{r['eval_s']:5.2f} (process {r['process_s']:.1f} s, {r['threads']} "
                        f"threads) metrics.csv {r['metrics_sha']} ({r['metrics_rows']} lines)",
                        flush=True,
                    )
                    prev = best[version].get(algo)
                    if prev is None or r["wall_s"] < prev["wall_s"]:
                        best[version][algo] = r
    if "old" in best:
        for algo in args.algorithms:
            o, n = best["old"][algo], best["new"][algo]
            ratios = "  ".join(
                f"{k[:-2]} {o[k] / max(n[k], 1e-9):.2f}x"
                for k in ("wall_s", "train_s", "engine_s", "eval_s")
            )
            print(f"{algo:<9} old / new (best of {args.rounds}): {ratios}")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(best, indent=2))
    differing = {a: sorted(d) for a, d in digests.items() if len(d) > 1}
    if differing:
        sys.exit(f"metrics.csv differ between runs: {differing}")
    print("metrics.csv identical across all runs of each algorithm")


# -- train mode ------------------------------------------------------------------------------

TRAIN_CHILD = r"""
import hashlib, json, sys, time, torch
from peerlearn.compute.memory import keep_large_buffers
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.models.zoo import build_model
keep_large_buffers()  # as a run does (its evaluator calls it before any training)
steps, chunk, threads, repeats = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
spec = build_model("mlp", input_shape=(1, 28, 28), num_classes=10, info={}, seed=1,
                   hidden=(113,))
g = torch.Generator().manual_seed(1)
x, y = torch.rand(6000, 1, 28, 28, generator=g), torch.randint(0, 10, (6000,), generator=g)
jobs = [TrainJob(spec.init_vector() + 0.01 * torch.randn(spec.layout.numel, generator=g),
                 torch.randint(0, 6000, (steps, 8), generator=g)) for _ in range(60)]
trainer = BatchedTrainer(spec, x, y, lr=0.05, max_jobs_per_call=chunk)
out = trainer.run(jobs)
best = cpu = float("inf")
for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.run(jobs)
    best = min(best, time.perf_counter() - t0)
    cpu = min(cpu, time.process_time() - c0)
digest = hashlib.sha256(out.numpy().tobytes() + trainer.last_loss.numpy().tobytes())
print(json.dumps({"ms_per_step": 1e3 * best / steps, "cpu_ms_per_step": 1e3 * cpu / steps,
                  "digest": digest.hexdigest()[:16]}))
"""


def train_mode(args: argparse.Namespace) -> None:
    versions = {"new": None} if args.old_src is None else {"old": args.old_src, "new": None}
    digests = set()
    rows: dict[tuple, dict[str, float]] = {}
    for _ in range(args.rounds):
        for threads in args.threads:
            for chunk in args.chunks:
                for version, src in versions.items():
                    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
                    if src is not None:
                        env["PYTHONPATH"] = src
                    cmd = [sys.executable, "-c", TRAIN_CHILD, str(args.steps), str(chunk)]
                    out = subprocess.run(
                        [*cmd, str(threads), str(args.repeats)],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                    r = json.loads(out.stdout.decode().strip().splitlines()[-1])
                    digests.add(r["digest"])
                    key = (threads, chunk)
                    best = rows.setdefault(key, {})
                    best[version] = min(best.get(version, float("inf")), r["ms_per_step"])
                    print(
                        f"{version:<4} threads {threads} jobs/call {chunk:3d}: "
                        f"{r['ms_per_step']:6.2f} ms wall, {r['cpu_ms_per_step']:6.2f} ms CPU "
                        f"per step of 60 jobs ({r['digest']})",
                        flush=True,
                    )
    for (threads, chunk), best in rows.items():
        ratio = f", old / new {best['old'] / best['new']:.2f}x" if "old" in best else ""
        cells = "  ".join(f"{v} {t:6.2f}" for v, t in best.items())
        print(f"threads {threads} jobs/call {chunk:3d}: {cells} ms/step{ratio}")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        table = [{"threads": t, "jobs_per_call": c, **best} for (t, c), best in rows.items()]
        Path(args.json).write_text(json.dumps(table, indent=2))
    if len(digests) > 1:
        sys.exit(f"trained vectors differ between variants: {sorted(digests)}")
    print("trained vectors and losses identical across all variants")


# -- flows mode ------------------------------------------------------------------------------


def load_flows_module(src: str, name: str):
    """``peerlearn/sim/flows.py`` of a source tree, as a standalone module."""
    spec = importlib.util.spec_from_file_location(name, Path(src) / "peerlearn/sim/flows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_flow_sets(virtual_s: float) -> list[tuple]:
    """Every ``max_min_rates`` input of a short DivShare run of the repro config."""
    import peerlearn.sim.flows as flows
    from peerlearn.config import load_config
    from peerlearn.experiment import build_setup
    from peerlearn.sim.engine import Simulator

    recorded: list[tuple] = []
    inner = flows.max_min_rates

    def recording(caps, entry_flow, entry_res, n_flows):
        recorded.append((caps.copy(), entry_flow.copy(), entry_res.copy(), n_flows))
        return inner(caps, entry_flow, entry_res, n_flows)

    flows.max_min_rates = recording
    try:
        sets = [f"stop.virtual_time_s={virtual_s}", "eval.every_s=1000"]
        Simulator(build_setup(load_config(CONFIG, sets))).run()
    finally:
        flows.max_min_rates = inner
    return recorded


def synthetic_flow_sets(count: int, max_flows: int, seed: int = 0) -> list[tuple]:
    """Random flow sets over 60 nodes with the divshare_60n7cs5 capacities (bytes/s)."""
    rng = np.random.default_rng(seed)
    n = 60
    up = np.full(n, 60e6 / 8)
    up[:7] = rng.uniform(10e6, 13e6, 7) / 8  # the 7 stragglers
    caps = np.concatenate([up, up])
    pairs = np.array([(i, j) for i in range(n) for j in range(n) if i != j])
    out = []
    for _ in range(count):
        k = int(rng.integers(1, max_flows + 1))
        chosen = pairs[rng.choice(len(pairs), size=k, replace=False)]
        flows = np.arange(k)
        out.append(
            (
                caps,
                np.concatenate([flows, flows]),
                np.concatenate([chosen[:, 0], n + chosen[:, 1]]),
                k,
            )
        )
    return out


def flows_mode(args: argparse.Namespace) -> None:
    new = load_flows_module(str(ROOT / "src"), "flows_new")
    versions = {"new": new.max_min_rates}
    if args.old_src:
        versions = {"old": load_flows_module(args.old_src, "flows_old").max_min_rates, **versions}
    if args.record:
        sets = record_flow_sets(args.record)
        what = f"recorded from {args.record} virtual s of DivShare"
    else:
        sets = synthetic_flow_sets(args.synthetic, args.max_flows)
        what = f"synthetic, up to {args.max_flows} flows"
    entries = np.mean([len(s[1]) for s in sets])
    print(f"{len(sets)} flow sets ({what}), {entries:.0f} entries on average")
    results = {v: [fn(*s) for s in sets] for v, fn in versions.items()}  # warm-up and check
    if "old" in results:
        for a, b in zip(results["old"], results["new"], strict=True):
            if not np.array_equal(a, b) or a.tobytes() != b.tobytes():
                sys.exit("max_min_rates: old and new rates differ")
        print("old and new rates identical (bytes)")
    best = {v: float("inf") for v in versions}
    for _ in range(args.rounds):
        for v, fn in versions.items():
            t0 = time.perf_counter()
            for s in sets:
                fn(*s)
            best[v] = min(best[v], time.perf_counter() - t0)
    for v, t in best.items():
        print(f"{v:<4} {t:7.3f} s, {1e6 * t / len(sets):7.1f} us per call")
    if "old" in best:
        print(f"new is {best['old'] / best['new']:.2f}x faster")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        per_call = {v: t / len(sets) for v, t in best.items()}
        Path(args.json).write_text(json.dumps({"sets": len(sets), "s_per_call": per_call}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["run", "train", "flows"], default="run")
    p.add_argument("--virtual-s", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--algorithms", nargs="+", default=["divshare", "swift", "adpsgd"])
    p.add_argument("--old-src", default=None, help="src folder of the old code to compare with")
    p.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE")
    p.add_argument("--record", type=float, default=0.0, help="flows: virtual s of DivShare")
    p.add_argument("--synthetic", type=int, default=300, help="flows: synthetic sets")
    p.add_argument("--max-flows", type=int, default=3540, help="flows: most flows in a set")
    p.add_argument("--steps", type=int, default=32, help="train: steps per job")
    p.add_argument("--repeats", type=int, default=3, help="train: timed runs (best kept)")
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 60, 4], help="train: jobs/call")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="train: torch threads")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.mode == "flows":
        flows_mode(args)
    elif args.mode == "train":
        train_mode(args)
    else:
        run_mode(args)


if __name__ == "__main__":
    main()
