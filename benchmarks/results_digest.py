"""A digest of every algorithm's recorded metrics on one small config.

Run it on two versions of the code: identical digests mean a change (a refactor, a speed-up)
left every simulated number unchanged, bit for bit.

    python benchmarks/results_digest.py [--virtual-s 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json

from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.sim.engine import Simulator

BASE = [
    "nodes=12",
    "network.preset=stragglers",
    "network.stragglers=3",
    "network.fast_mbps=20",
    "train.local_steps=5",
]
VARIANTS = [
    ["algorithm.name=divshare"],
    ["algorithm.name=divshare", "network.rate_update_s=0.01"],
    ["algorithm.name=swift"],
    ["algorithm.name=adpsgd"],
    ["algorithm.name=adpsgd", "algorithm.variant=atomic"],
    ["algorithm.name=dpsgd"],
    ["algorithm.name=jwins"],
    ["algorithm.name=choco"],
    ["algorithm.name=topk"],
    ["algorithm.name=subsampling"],
    ["algorithm.name=el_oracle", "algorithm.s=4"],
    ["algorithm.name=el_local", "algorithm.s=4"],
    ["algorithm.name=gossip"],
    ["algorithm.name=dpsgd", "topology.dynamic=true"],
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--virtual-s", type=float, default=8.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = {}
    for extra in VARIANTS:
        cfg = load_config(None, [*BASE, f"stop.virtual_time_s={args.virtual_s}", *extra])
        sim = Simulator(build_setup(cfg))
        sim.run()
        digest = hashlib.sha256(repr(sim.recorder.rows).encode()).hexdigest()[:16]
        label = " ".join(extra)
        out[label] = {"digest": digest, "rows": len(sim.recorder.rows)}
        print(f"{label:<55} {digest} {len(sim.recorder.rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
