"""Workload W1: wall time against its arithmetic floor.

16 nodes, D-PSGD over a random 4-regular graph, CIFAR-10 split Dirichlet(1), GN-LeNet, lr 0.01,
batch 8, 3 local steps per round, 200 rounds; every node's model is tested on the full test set
at rounds 50, 100, 150 and 200 (and at t = 0, where all 16 models are the same one, evaluated
once). The network is ideal and compute uniform, so round r ends at virtual time 3 r s (one
virtual second per step) and evaluating every 150 virtual seconds hits the four rounds exactly.

Prints the wall time (split into training, evaluation and the engine), the FLOP floor (training
forward + backward and evaluation forward FLOPs counted from the layer shapes, at the float32
matmul rate measured in the same run), the ratio wall / floor, and the resource usage of the
run (user and system CPU seconds, page faults). ``--eval-probe`` also evaluates 16 distinct
models on the test set at several evaluation batch sizes, with the system time and page faults
of each (the evaluator's system time was suspected to come from page faults).

Data: CIFAR-10 in the official python layout under a root named by PEERLEARN_DATA (or
``--data``), e.g. ``python /work/shared/data/cifar10/build_batches.py /tmp/peerlearn-data/cifar10``
then ``PEERLEARN_DATA=/tmp/peerlearn-data``.

    python benchmarks/w1.py [--rounds 200] [--test-samples N] [--eval-probe] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

# as the peerlearn CLI does (cli.main), before torch loads OpenMP: idle OpenMP threads sleep
# instead of spinning, on a core that the fused kernels' threads or another process need
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from common import gn_lenet_flops, matmul_flops
from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.results.summary import final_metrics
from peerlearn.sim.engine import Simulator

NODES, BATCH, STEPS = 16, 8, 3


def usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user_s": r.ru_utime,
        "sys_s": r.ru_stime,
        "minor_faults": r.ru_minflt,
        "major_faults": r.ru_majflt,
    }


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


def config(rounds: int, test_samples: int | None, data: str | None) -> list[str]:
    every = 3.0 * max(1, rounds // 4)  # rounds/4, 2 rounds/4, ...: 50, 100, 150, 200 for 200
    out = [
        f"nodes={NODES}",
        "data.dataset=cifar10",
        "data.partition=dirichlet",
        "data.alpha=1.0",
        "model.name=gn_lenet",
        "train.lr=0.01",
        f"train.batch_size={BATCH}",
        f"train.local_steps={STEPS}",
        "compute.step_time_s=1.0",
        "network.preset=ideal",
        "topology.kind=regular",
        "topology.degree=4",
        "algorithm.name=dpsgd",
        f"stop.iterations={rounds}",
        f"stop.virtual_time_s={3.0 * rounds + 1.0}",
        f"eval.every_s={every}",
    ]
    if test_samples is not None:
        out.append(f"eval.test_samples={test_samples}")
    if data is not None:
        out.append(f"data.root={data}")
    return out


def eval_probe(sim: Simulator, batch_sizes: list[int], n_test: int | None) -> list[dict]:
    """16 distinct models on the test set at several evaluation batch sizes."""
    from peerlearn.compute import BatchedEvaluator

    ds = sim.setup.dataset
    g = torch.Generator().manual_seed(0)
    params = sim.models + 1e-3 * torch.randn(sim.models.shape, generator=g)
    x, y = ds.test_x, ds.test_y
    if n_test is not None:
        x, y = x[:n_test], y[:n_test]
    rows = []
    for bs in batch_sizes:
        ev = BatchedEvaluator(sim.setup.model, x, y, batch_size=bs)
        ev.evaluate(params[:1])  # warm-up
        u0, t0 = usage(), time.perf_counter()
        ev.evaluate(params)
        wall = time.perf_counter() - t0
        d = delta(u0, usage())
        rows.append({"batch_size": bs, "wall_s": wall, **d})
        print(
            f"  eval batch {bs:>4}: wall {wall:6.2f} s, user {d['user_s']:6.2f} s, "
            f"sys {d['sys_s']:5.2f} s, minor faults {d['minor_faults']:>9,.0f}",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--test-samples", type=int, default=None, help="default: the full test set")
    p.add_argument("--data", default=None, help="data root (default: PEERLEARN_DATA)")
    p.add_argument("--set", action="append", default=[], help="extra config overrides")
    p.add_argument("--eval-probe", action="store_true")
    p.add_argument("--probe-batches", type=int, nargs="+", default=[500, 100, 25])
    p.add_argument("--json", default=None)
    args = p.parse_args()

    cfg = load_config(None, [*config(args.rounds, args.test_samples, args.data), *args.set])
    load_before = os.getloadavg()
    t_setup = time.perf_counter()
    sim = Simulator(build_setup(cfg))  # with compute.fused: builds or loads the kernel
    setup_s = time.perf_counter() - t_setup
    threads = torch.get_num_threads()
    peak = matmul_flops(1024)  # at the thread count the run uses
    u0 = usage()
    result = sim.run()
    run_usage = delta(u0, usage())
    peak = max(peak, matmul_flops(1024))  # before and after: the better of the two

    flops = gn_lenet_flops()
    n_test = args.test_samples or len(sim.setup.dataset.test_y)
    # every node's iterations (rounds) x steps x batch samples, forward and backward
    train_flops = int(result.iterations.sum()) * STEPS * BATCH * flops["forward_backward"]
    eval_flops = (result.eval_models or 0) * n_test * flops["forward"]
    floor = (train_flops + eval_flops) / peak
    engine = result.wall_time_s - result.train_wall_s - result.eval_wall_s
    out = {
        "rounds": args.rounds,
        "iterations_mean": float(result.iterations.mean()),
        "test_samples": n_test,
        "threads": threads,
        "fused": cfg.compute.fused,
        "setup_s": setup_s,
        "wall_s": result.wall_time_s,
        "train_s": result.train_wall_s,
        "eval_s": result.eval_wall_s,
        "engine_s": engine,
        "models_evaluated": result.eval_models,
        "train_gflop": train_flops / 1e9,
        "eval_gflop": eval_flops / 1e9,
        "matmul_gflops": peak / 1e9,
        "floor_s": floor,
        "ratio": result.wall_time_s / floor,
        "usage": run_usage,
        # the process's peak resident set (Linux reports KiB)
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "test_acc_mean": final_metrics(sim.recorder).get("test_acc_mean"),
        "load_average_before": load_before,
        "load_average": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    print(
        f"W1, {args.rounds} rounds ({out['iterations_mean']:.0f} per node), {n_test} test images,"
        f" {threads} threads (OMP_WAIT_POLICY={out['omp_wait_policy']}), compute.fused = "
        f"{str(cfg.compute.fused).lower()}\n"
        f"setup {setup_s:.1f} s (data, model, the fused kernel's build or load; not in wall)\n"
        f"wall {result.wall_time_s:.1f} s = training {result.train_wall_s:.1f} + evaluation "
        f"{result.eval_wall_s:.1f} ({result.eval_models} models) + engine {engine:.1f}\n"
        f"FLOPs: training {train_flops / 1e9:.0f} G + evaluation {eval_flops / 1e9:.0f} G at "
        f"{peak / 1e9:.1f} GFLOP/s (1024 matmul, this run) -> floor {floor:.1f} s; "
        f"wall / floor {out['ratio']:.2f}x\n"
        f"final mean test accuracy {out['test_acc_mean']}\n"
        f"CPU: user {run_usage['user_s']:.1f} s, system {run_usage['sys_s']:.1f} s, "
        f"minor page faults {run_usage['minor_faults']:,.0f}, "
        f"peak resident {out['max_rss_mb']:,.0f} MB\n"
        f"load average before {tuple(round(v, 2) for v in load_before)}, after "
        f"{tuple(round(v, 2) for v in os.getloadavg())}",
        flush=True,
    )
    if args.eval_probe:
        print("evaluation probe (16 distinct models):")
        out["eval_probe"] = eval_probe(sim, args.probe_batches, args.test_samples)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
