"""The flow network model and the engine at scale: exact vs bounded rate updates.

1. Replay one DivShare-like traffic trace (every node, once per iteration, sends Ω·r fragments to
   random peers over the artifact's straggler network) through the exact model and through
   bounded rate updates; report wall time, recomputations and how much per-message transfer times
   change (transfer time = last byte sent - enqueued).
2. Simulated DivShare (Ω = 10, r = 6) with training that costs nothing (benchmark-only): message
   deliveries per wall second, by node count.

    python benchmarks/network_model.py [--nodes 60] [--engine-nodes 64 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.network.presets import build_network
from peerlearn.sim.engine import Simulator
from peerlearn.sim.network import flow_network


def traffic(n: int, iterations: int, frag_bytes: int, omega: int, r: int, seed: int = 0):
    """(time, src, dst, nbytes) sends: node i starts iteration k at k * period_i + jitter."""
    rng = np.random.default_rng(seed)
    sends = []
    for i in range(n):
        period = 1.0 + 0.1 * rng.random()
        for k in range(iterations):
            t0 = k * period + 0.05 * rng.random()
            for _ in range(omega):
                for j in rng.choice(n - 1, size=r, replace=False):
                    sends.append((t0, i, int(j + (j >= i)), frag_bytes))
    sends.sort(key=lambda s: s[0])
    return sends


def replay(spec, sends, rate_update_s: float) -> tuple[np.ndarray, float, int]:
    net = flow_network(spec, rate_update_s)
    enq = np.array([s[0] for s in sends])
    done = np.full(len(sends), np.nan)
    t0 = time.perf_counter()
    for m, (t, src, dst, nbytes) in enumerate(sends):
        while net.next_completion_time() <= t:
            for mid, ft in net.advance_to(net.next_completion_time()):
                done[mid] = ft
        for mid, ft in net.advance_to(t):
            done[mid] = ft
        net.enqueue(m, src, dst, nbytes)
    while math.isfinite(net.next_completion_time()):
        for mid, ft in net.advance_to(net.next_completion_time()):
            done[mid] = ft
    return done - enq, time.perf_counter() - t0, net.recomputations


class _FreeTrainer:
    """Benchmark-only: training returns the start vectors at no cost."""

    last_loss = None

    def run(self, jobs):
        return torch.stack([j.start for j in jobs])


def engine_rate(nodes: int, virtual_s: float, rate_update_s: float) -> dict:
    cfg = load_config(
        None,
        [
            f"nodes={nodes}",
            "algorithm.name=divshare",
            "algorithm.fragments=10",
            "algorithm.fanout=6",
            "model.hidden=[64]",
            "network.preset=stragglers",
            "network.fast_mbps=60",
            f"network.stragglers={max(1, nodes // 8)}",
            f"network.rate_update_s={rate_update_s}",
            "compute.step_time_s=0.02",
            "train.local_steps=16",
            f"stop.virtual_time_s={virtual_s}",
            f"eval.every_s={virtual_s}",
            "eval.nodes=4",
        ],
    )
    sim = Simulator(build_setup(cfg))
    sim.trainer = _FreeTrainer()
    res = sim.run()
    return {
        "nodes": nodes,
        "rate_update_s": rate_update_s,
        "deliveries": res.messages_delivered,
        "wall_s": res.wall_time_s,
        "deliveries_per_wall_s": res.messages_delivered / res.wall_time_s,
        "recomputations": sim.net.recomputations,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=60)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--updates", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--engine-nodes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--engine-virtual-s", type=float, default=3.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out: dict = {"replay": [], "engine": []}

    spec = (
        build_network("divshare_60n7cs5", 60)
        if args.nodes == 60
        else build_network(
            "stragglers", args.nodes, fast_mbps=60, slowdown=5, stragglers=max(1, args.nodes // 8)
        )
    )
    sends = traffic(args.nodes, args.iterations, frag_bytes=89_834 * 4 // 10, omega=10, r=6)
    exact, t_exact, rc_exact = replay(spec, sends, 0.0)
    print(f"replay: {args.nodes} nodes, {len(sends)} messages")
    print(
        f"  exact: {t_exact:.2f} s wall, {rc_exact} recomputations, "
        f"median transfer {np.median(exact) * 1e3:.1f} ms"
    )
    for dt in args.updates:
        approx, t_approx, rc = replay(spec, sends, dt)
        rel = (approx - exact) / exact
        row = {
            "rate_update_s": dt,
            "speedup_vs_exact": t_exact / t_approx,
            "recomputations": rc,
            "transfer_rel_diff_median": float(np.median(rel)),
            "transfer_rel_diff_p90_abs": float(np.quantile(np.abs(rel), 0.9)),
            "transfer_median_ratio": float(np.median(approx) / np.median(exact)),
        }
        out["replay"].append(row)
        print(
            f"  rate_update_s={dt}: {row['speedup_vs_exact']:.1f}x faster than exact, "
            f"{rc} recomputations; transfer time vs exact: median rel diff "
            f"{row['transfer_rel_diff_median']:+.1%}, p90 |rel diff| "
            f"{row['transfer_rel_diff_p90_abs']:.1%}, median ratio "
            f"{row['transfer_median_ratio']:.3f}"
        )
    for n in args.engine_nodes:
        for dt in (0.0, 0.05) if n <= 64 else (0.05,):
            row = engine_rate(n, args.engine_virtual_s, dt)
            out["engine"].append(row)
            print(
                f"engine: {n} nodes DivShare Ω=10 r=6, free training, rate_update_s={dt}: "
                f"{row['deliveries_per_wall_s']:,.0f} deliveries per wall s "
                f"({row['deliveries']} in {row['wall_s']:.1f} s)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
