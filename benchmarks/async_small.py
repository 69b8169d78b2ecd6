"""Small models under an asynchronous algorithm: wall time per trained sample, DivShare vs D-PSGD.

Runs the built-in quickstart (16 digits nodes, 64-unit MLP) for ``--virtual-s`` seconds with
D-PSGD and with DivShare, each in a fresh process, and prints the wall seconds per trained sample
(wall / (training jobs x local steps x batch size)) and the DivShare / D-PSGD ratio. With
``--old-src DIR`` (a ``src`` folder of an older checkout, e.g. ``git archive OLD src | tar -x -C
DIR``) the same runs use that code too, old and new alternating, so the two are compared side by
side under the same machine load.

    python benchmarks/async_small.py [--virtual-s 20] [--rounds 2] [--old-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.sim.engine import Simulator
cfg = load_config(None, sys.argv[1:])
sim = Simulator(build_setup(cfg))
t0 = time.perf_counter()
r = sim.run()
wall = time.perf_counter() - t0
samples = r.train_jobs * cfg.train.local_steps * cfg.train.batch_size
print(json.dumps({"wall_s": wall, "train_s": r.train_wall_s, "eval_s": r.eval_wall_s,
                  "samples": samples, "batches": r.train_batches}))
"""


def run(src: str | None, overrides: list[str], env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra}
    if src is not None:  # the old code, as its command line ran it: OpenMP's default policy
        env["PYTHONPATH"] = src
        env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *overrides],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--virtual-s", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--old-src", default=None, help="src folder of the old code to compare with")
    p.add_argument("--threads", default=None, help="OMP_NUM_THREADS for every run (default unset)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    env_extra = {"OMP_WAIT_POLICY": "PASSIVE"}
    if args.threads:
        env_extra["OMP_NUM_THREADS"] = args.threads
    versions = {"new": None} if args.old_src is None else {"old": args.old_src, "new": None}
    best: dict[str, dict[str, dict]] = {v: {} for v in versions}
    for _ in range(args.rounds):
        for algo in ("dpsgd", "divshare"):
            for version, src in versions.items():
                r = run(
                    src,
                    [f"stop.virtual_time_s={args.virtual_s}", f"algorithm.name={algo}"],
                    env_extra,
                )
                r["per_sample_us"] = 1e6 * r["wall_s"] / max(r["samples"], 1)
                print(
                    f"{version:<4} {algo:<9} wall {r['wall_s']:6.2f} s (training {r['train_s']:.2f}"
                    f" s, {r['batches']} calls), {r['samples']} samples, "
                    f"{r['per_sample_us']:.1f} us/sample",
                    flush=True,
                )
                prev = best[version].get(algo)
                if prev is None or r["per_sample_us"] < prev["per_sample_us"]:
                    best[version][algo] = r
    for version, runs in best.items():
        ratio = runs["divshare"]["per_sample_us"] / runs["dpsgd"]["per_sample_us"]
        print(
            f"{version}: D-PSGD {runs['dpsgd']['per_sample_us']:.1f} us/sample, DivShare "
            f"{runs['divshare']['per_sample_us']:.1f} us/sample, ratio {ratio:.2f}x"
        )
        runs["ratio"] = ratio
    if "old" in best:
        for algo in ("dpsgd", "divshare"):
            speedup = best["old"][algo]["per_sample_us"] / best["new"][algo]["per_sample_us"]
            print(f"{algo}: new is {speedup:.2f}x faster per sample than old")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(best, f, indent=2)


if __name__ == "__main__":
    main()
