"""Evaluation with glibc's default malloc thresholds vs the evaluator's raised ones.

Each measurement is a fresh process that evaluates ``--models`` distinct GN-LeNets on ``--test``
random 3x32x32 images at ``--batch`` images per forward (the simulator's default is 500), with
``PEERLEARN_KEEP_BUFFERS=0`` (glibc's defaults: large activations are mmap'd and faulted in on
every batch) or unset (compute/memory.py); the two alternate. Prints wall, user and system
seconds and minor page faults of the timed call, and checks that the metrics are identical.

    python benchmarks/eval_memory.py [--models 8] [--test 1000] [--batch 500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from peerlearn.compute import BatchedEvaluator
from peerlearn.models import build_model
models, test, batch = map(int, sys.argv[1:4])
spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
g = torch.Generator().manual_seed(0)
x = torch.randn(test, 3, 32, 32, generator=g)
y = torch.randint(0, 10, (test,), generator=g)
init = spec.init_vector()
params = torch.stack([init + 0.01 * torch.randn(init.shape, generator=g) for _ in range(models)])
ev = BatchedEvaluator(spec, x, y, batch_size=batch)
ev.evaluate(params[:1])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
out = ev.evaluate(params)
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime,
                  "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "loss": out["loss"].tolist(), "acc": out["acc"].tolist(),
                  "threads": torch.get_num_threads()}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"default malloc": [], "kept buffers": []}
    for _ in range(args.rounds):
        for name, keep in (("default malloc", "0"), ("kept buffers", "1")):
            env = {**os.environ, "PEERLEARN_KEEP_BUFFERS": keep}
            argv = [str(args.models), str(args.test), str(args.batch)]
            out = subprocess.run(
                [sys.executable, "-c", CHILD, *argv],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(r)
            print(
                f"{name:<15} wall {r['wall_s']:6.2f} s, user {r['user_s']:6.2f} s, "
                f"sys {r['sys_s']:5.2f} s, minor faults {r['minor_faults']:>9,}",
                flush=True,
            )
    a, b = runs["default malloc"][0], runs["kept buffers"][0]
    same = a["loss"] == b["loss"] and a["acc"] == b["acc"]
    cpu = {k: min(r["user_s"] + r["sys_s"] for r in v) for k, v in runs.items()}
    print(
        f"identical metrics: {same}; CPU seconds (best) default {cpu['default malloc']:.2f}, "
        f"kept {cpu['kept buffers']:.2f}: {cpu['default malloc'] / cpu['kept buffers']:.2f}x"
    )
    print(f"load average: {os.getloadavg()}")
    if not same:
        raise SystemExit("metrics differ")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "identical": same}, f, indent=2)


if __name__ == "__main__":
    main()
