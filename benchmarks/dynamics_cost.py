"""What capacity traces and churn cost the simulator: DivShare at 256 nodes, side by side.

The same run (digits, a tiny MLP, DivShare) with dynamics off, with a trace that sets every
node's capacities to the values they already have every 0.5 s (the mechanism's own cost: the
run is unchanged, every change still re-rates the flows), with a rotating-stragglers capacity
trace, with exponential churn, and with both. Churn changes the work itself (offline
nodes neither train nor send), so the cost is compared per message handled (delivered, lost to
churn or dropped by a flush) in the engine's own wall time (training and evaluation excluded),
besides virtual seconds per wall second; and directly, the wall time spent in the dynamics code
itself (applying changes, leaves and rejoins, filtering sends to offline nodes), timed by
wrapping those functions, as a share of the engine's time. Variants are interleaved and
repeated; the best of the repeats counts. Target: < 10 % of the engine's time.

    python benchmarks/dynamics_cost.py [--nodes 256] [--virtual-s 4] [--repeats 2] [--json f]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.sim import dynamics as dyn_module
from peerlearn.sim.engine import Simulator

_spent = [0.0]


def _timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[0] += time.perf_counter() - t0

    return wrapper


# every entry point of the engine into the dynamics code (nested calls are not double counted:
# _leave and _rejoin run inside apply_due)
for _name in ("apply_due", "send_lost", "freeze"):
    setattr(dyn_module.SimDynamics, _name, _timed(getattr(dyn_module.SimDynamics, _name)))

BASE = [
    "algorithm.name=divshare",
    "algorithm.fragments=4",
    "algorithm.fanout=2",
    "network.preset=stragglers",
    "network.fast_mbps=60",
    "network.slowdown=5",
    "model.hidden=[16]",
    "train.local_steps=10",
    "compute.step_time_s=0.01",
    "eval.every_s=1000",
    "eval.test_samples=100",
]
VARIANTS = {
    "off": [],
    "same caps": [],  # filled in by main(): a trace file of unchanged capacities
    "traces": [
        "dynamics.kind=rotating_stragglers",
        "dynamics.period_s=0.5",  # nodes // 8 of them slowed at a time (32 of 256)
    ],
    "churn": [
        "churn.kind=exponential",
        "churn.offline_fraction=0.1",
        "churn.mean_offline_s=1",
    ],
}
VARIANTS["both"] = VARIANTS["traces"] + VARIANTS["churn"]


def one(nodes: int, virtual_s: float, extra: list[str]) -> dict:
    cfg = load_config(
        None,
        [*BASE, f"nodes={nodes}", f"network.stragglers={nodes // 8}",
         f"dynamics.stragglers={nodes // 8}", f"stop.virtual_time_s={virtual_s}", *extra],
    )  # fmt: skip
    sim = Simulator(build_setup(cfg))
    _spent[0] = 0.0
    res = sim.run()
    lost = res.churn["messages_lost"] if res.churn else 0
    handled = res.messages_delivered + res.messages_dropped + lost
    engine_s = res.wall_time_s - res.train_wall_s - res.eval_wall_s
    return {
        "wall_s": res.wall_time_s,
        "engine_s": engine_s,
        "messages": handled,
        "engine_us_per_message": 1e6 * engine_s / max(handled, 1),
        "dynamics_s": _spent[0],
        "dynamics_share": _spent[0] / engine_s,
        "recomputations": sim.net.recomputations,
        "virtual_s_per_wall_s": res.virtual_time_s / res.wall_time_s,
        "iterations_mean": float(res.iterations.mean()),
    }


def same_capacity_trace(path: Path, nodes: int, virtual_s: float, period_s: float = 0.5) -> None:
    """Every node at its current capacity (BASE's stragglers preset) every ``period_s``."""
    slow = nodes // 8
    rows = ["time_s,node,up_mbps,down_mbps"]
    t = period_s
    while t < virtual_s:
        for i in range(nodes):
            mbps = 60 / 5 if i < slow else 60
            rows.append(f"{t:g},{i},{mbps:g},{mbps:g}")
        t += period_s
    path.write_text("\n".join(rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=256)
    p.add_argument("--virtual-s", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    trace = Path(tmp.name) / "same.csv"
    same_capacity_trace(trace, args.nodes, args.virtual_s, min(0.5, args.virtual_s / 2))
    VARIANTS["same caps"] = ["dynamics.kind=trace", f"dynamics.trace={trace}"]
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, extra in VARIANTS.items():  # interleaved: drift hits every variant alike
            r = one(args.nodes, args.virtual_s, extra)
            if name not in best or r["engine_us_per_message"] < best[name]["engine_us_per_message"]:
                best[name] = r
    ref = best["off"]["engine_us_per_message"]
    print(f"DivShare, {args.nodes} nodes, {args.virtual_s:g} virtual s, best of {args.repeats}")
    print(
        f"{'variant':<9} {'messages':>9} {'engine s':>9} {'us/msg':>7} {'vs off':>7}"
        f" {'in dynamics':>12} {'recomp':>7} {'virt s/wall s':>14} {'iters':>6}"
    )
    for name, r in best.items():
        cost = r["engine_us_per_message"] / ref - 1
        r["cost_vs_off"] = cost
        print(
            f"{name:<9} {r['messages']:>9} {r['engine_s']:>9.2f} {r['engine_us_per_message']:>7.2f}"
            f" {cost:>+7.1%} {r['dynamics_share']:>12.2%} {r['recomputations']:>7}"
            f" {r['virtual_s_per_wall_s']:>14.3f} {r['iterations_mean']:>6.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(best, f, indent=2)


if __name__ == "__main__":
    main()
