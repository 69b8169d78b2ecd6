"""Batched evaluation of many nodes on a shared test set vs evaluating them one after another.

Side by side in one run: ``BatchedEvaluator.evaluate`` on all nodes at once; the same nodes
evaluated one by one with a plain nn.Module (batches of ``--batch``); and one model evaluated alone
(the per-model ceiling, in samples per second).

    python benchmarks/eval_throughput.py [--nodes 60] [--test 10000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from common import timed
from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.precision import use_tf32
from peerlearn.models.zoo import build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=60)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="cuda: TF32 convolutions and matmuls")
    p.add_argument("--node-chunk", type=int, default=None, help="nodes per call (default: auto)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    use_tf32(args.tf32)  # strict float32 unless asked (PyTorch's default has TF32 convolutions)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.test, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.test,), generator=g)
    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    params = spec.init_vector().unsqueeze(0) + 0.01 * torch.randn(
        args.nodes, spec.layout.numel, generator=g
    )
    ev = BatchedEvaluator(
        spec, x, y, batch_size=args.batch, node_chunk=args.node_chunk, device=args.device
    )

    xd = x.to(args.device)  # resident, as the batched evaluator keeps it

    def sequential() -> None:
        module = copy.deepcopy(spec.module).to(args.device)  # never touch the template
        with torch.inference_mode():
            for k in range(args.nodes):
                spec.layout.load(module, params[k])
                for s in range(0, args.test, args.batch):
                    module(xd[s : s + args.batch]).argmax(1)

    ev.evaluate(params[:2])  # warm-up; then one timed call each (the sequential one is long)
    t_bat = timed(lambda: ev.evaluate(params), args.device)
    t_seq = timed(sequential, args.device)
    t_one = timed(lambda: ev.evaluate(params[:1]), args.device)
    samples = args.nodes * args.test
    res = {
        "nodes": args.nodes,
        "tf32": args.tf32,
        "node_chunk": ev.node_chunk,
        "device": args.device,
        "test_samples": args.test,
        "batched_samples_per_s": samples / t_bat,
        "sequential_samples_per_s": samples / t_seq,
        "single_model_samples_per_s": args.test / t_one,
        "batched_vs_sequential": t_seq / t_bat,
        "batched_vs_single_model": (samples / t_bat) / (args.test / t_one),
    }
    for k, v in res.items():
        print(f"{k:>28}: {v:.3f}" if isinstance(v, float) else f"{k:>28}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
