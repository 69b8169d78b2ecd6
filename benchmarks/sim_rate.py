"""Simulated seconds per wall second and peak memory of D-PSGD on digits, by node count.

Each size runs in its own process so that its peak resident memory is its own.

    python benchmarks/sim_rate.py [--nodes 16 64] [--virtual-s 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(nodes: int, virtual_s: float) -> dict:
    from peerlearn.config import load_config
    from peerlearn.experiment import build_setup
    from peerlearn.sim.engine import Simulator

    cfg = load_config(None, [f"nodes={nodes}", f"stop.virtual_time_s={virtual_s}"])
    t0 = time.perf_counter()
    setup = build_setup(cfg)
    setup_s = time.perf_counter() - t0
    sim = Simulator(setup)
    res = sim.run()
    return {
        "nodes": nodes,
        "virtual_s": res.virtual_time_s,
        "setup_wall_s": setup_s,
        "sim_wall_s": res.wall_time_s,
        "virtual_s_per_wall_s": res.virtual_time_s / res.wall_time_s,
        "train_share": res.train_wall_s / res.wall_time_s,
        "eval_share": res.eval_wall_s / res.wall_time_s,
        "jobs_per_batch": res.train_jobs / max(res.train_batches, 1),
        "iterations_mean": float(res.iterations.mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_acc_mean": sim.last_mean_acc,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--virtual-s", type=float, default=60.0)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child, args.virtual_s)))
        return
    rows = []
    for n in args.nodes:
        cmd = [sys.executable, __file__, "--child", str(n), "--virtual-s", str(args.virtual_s)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{'nodes':>6} {'virt s/wall s':>14} {'sim wall s':>11} {'train':>6} {'jobs/batch':>11}"
        f" {'peak MB':>8} {'acc':>6}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>6} {r['virtual_s_per_wall_s']:>14.2f} {r['sim_wall_s']:>11.1f}"
            f" {r['train_share']:>6.0%} {r['jobs_per_batch']:>11.1f} {r['peak_rss_mb']:>8.0f}"
            f" {r['final_acc_mean']:>6.3f}"
        )
    if len(rows) > 1:
        print(
            f"rate ratio {rows[-1]['nodes']} vs {rows[0]['nodes']} nodes: "
            f"{rows[-1]['virtual_s_per_wall_s'] / rows[0]['virtual_s_per_wall_s']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
