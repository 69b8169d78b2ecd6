"""The generic torch.func path against hand-batched hooks, and ResNet-8 on it, side by side.

Training (``BatchedTrainer``: all nodes' jobs in one call) and evaluation (``BatchedEvaluator``
on a shared test set) in samples per second, for

- GN-LeNet with its hooks (grouped convolutions: ``stacked``, ``stacked_shared``);
- GN-LeNet on the generic path (``ModelSpec.without_hooks``: vmap of functional_call);
- ResNet-8 (GroupNorm), which has no hooks;
- each model's nodes trained one after another with nn.Module + torch.optim.SGD (context).

Variants are timed in turns (A B C A B C ...) and the best of ``--repeats`` is kept, so a load
spike from other processes hits all of them alike; the ratios are what to compare.

    python benchmarks/generic_model.py [--nodes 16] [--batch 8] [--steps 8] [--repeats 3]
        [--test 500] [--threads 1] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from common import timed
from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.precision import use_tf32
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.models.spec import ModelSpec
from peerlearn.models.zoo import build_model

SHAPE = (3, 32, 32)


def _spec(name: str) -> ModelSpec:
    return build_model(name, input_shape=SHAPE, num_classes=10, info={}, seed=1)


def _turns(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Best wall seconds of each function, timed in turns after one warm-up call each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, device))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--test", type=int, default=500, help="shared test samples per evaluation")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: steadiest on a busy machine)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    use_tf32(False)  # strict float32 on a GPU, as the tests compare
    g = torch.Generator().manual_seed(0)
    n_data = 2048
    x, y = torch.randn(n_data, *SHAPE, generator=g), torch.randint(0, 10, (n_data,), generator=g)
    test_x, test_y = x[: args.test], y[: args.test]
    lenet, resnet = _spec("gn_lenet"), _spec("resnet8")
    variants = {
        "gn_lenet_hooks": lenet,
        "gn_lenet_generic": lenet.without_hooks(),
        "resnet8_generic": resnet,
    }
    batches = torch.randint(0, n_data, (args.nodes, args.steps, args.batch), generator=g)

    def jobs_for(spec: ModelSpec) -> list[TrainJob]:
        init = spec.init_vector()
        return [TrainJob(init.clone(), batches[k]) for k in range(args.nodes)]

    train, evaluate, sequential = {}, {}, {}
    for name, spec in variants.items():
        trainer = BatchedTrainer(spec, x, y, lr=0.05, device=args.device)
        jobs = jobs_for(spec)
        train[name] = lambda t=trainer, j=jobs: t.run(j)
        ev = BatchedEvaluator(spec, test_x, test_y, device=args.device)
        params = spec.init_vector() + 0.01 * torch.randn(args.nodes, spec.layout.numel, generator=g)
        evaluate[name] = lambda e=ev, q=params: e.evaluate(q)
        if name != "gn_lenet_generic":  # one nn.Module baseline per architecture
            one = jobs[: max(1, args.nodes // 4)]  # a quarter of the nodes: it is slow
            arch = name.removesuffix("_hooks").removesuffix("_generic")
            sequential[arch] = (
                lambda t=trainer, j=one: [t.run_one_reference(job) for job in j],
                len(one),
            )
    t_train = _turns(train, args.repeats, args.device)
    t_eval = _turns(evaluate, args.repeats, args.device)
    t_seq = _turns({k: fn for k, (fn, _) in sequential.items()}, args.repeats, args.device)

    per_call = args.nodes * args.steps * args.batch
    res: dict[str, object] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "nodes": args.nodes,
        "batch": args.batch,
        "steps": args.steps,
        "test": args.test,
        "parameters": {"gn_lenet": lenet.layout.numel, "resnet8": resnet.layout.numel},
    }
    for name in variants:
        res[f"train_{name}_samples_per_s"] = per_call / t_train[name]
        res[f"eval_{name}_samples_per_s"] = args.nodes * args.test / t_eval[name]
    for arch, (_, n_jobs) in sequential.items():
        res[f"train_{arch}_sequential_samples_per_s"] = (
            n_jobs * args.steps * args.batch / t_seq[arch]
        )
    res["train_generic_vs_hooks_gn_lenet"] = t_train["gn_lenet_hooks"] / t_train["gn_lenet_generic"]
    res["eval_generic_vs_hooks_gn_lenet"] = t_eval["gn_lenet_hooks"] / t_eval["gn_lenet_generic"]
    res["train_resnet8_vs_gn_lenet_hooks"] = t_train["gn_lenet_hooks"] / t_train["resnet8_generic"]
    res["train_resnet8_batched_vs_sequential"] = (
        res["train_resnet8_generic_samples_per_s"] / res["train_resnet8_sequential_samples_per_s"]
    )
    res["train_gn_lenet_hooks_vs_sequential"] = (
        res["train_gn_lenet_hooks_samples_per_s"] / res["train_gn_lenet_sequential_samples_per_s"]
    )
    for k, v in res.items():
        print(f"{k:>42}: {v:,.3f}" if isinstance(v, float) else f"{k:>42}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
