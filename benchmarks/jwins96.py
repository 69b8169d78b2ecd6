"""The 96-node JWINS configs: wall time per round, and the error of their cheaper evaluation.

    python benchmarks/jwins96.py cost CONFIG [--rounds 15] [--algorithm jwins]
    python benchmarks/jwins96.py error CONFIG [--rounds 60] [--every 20] [--json out.json]

``cost`` runs a short simulation twice on one thread: evaluation off (only the dedup'd initial
evaluation and a one-node, one-sample final one), then with the config's evaluation every
``--eval-every`` rounds; it prints wall seconds per round and per evaluation, and the estimate of
a full run (``stop.iterations`` rounds, one evaluation every ``eval.every_iterations``).

``error`` runs a short simulation, keeps every node's model at rounds 0, k, 2k, ..., then
evaluates each on the whole test set, sample by sample: the *full* evaluation (mean over all
nodes of the accuracy on all test images). Against it: the config's own cheaper evaluation
(``eval.nodes`` x ``eval.test_samples``, the fixed subsets drawn from the seed, exactly what a
run reports), and the root-mean-square and largest error over 500 random draws of other subset
sizes. Evaluation never changes training, so the models are those of a run with any evaluation.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from peerlearn.compute.evaluator import BatchedEvaluator, distinct_rows
from peerlearn.config import load_config
from peerlearn.experiment import build_setup
from peerlearn.sim.engine import Simulator

SIZES = [(8, 1000), (16, 1000), (16, 2000), (32, 2000), (16, 10000), (96, 2000), (32, 5000)]


def _cfg(path: str, extra: list[str]):
    return load_config(path, ["stop.virtual_time_s=1000000", *extra])


def cost(args) -> dict:
    torch.set_num_threads(1)
    base = load_config(args.config)
    algo = [f"algorithm.name={args.algorithm}"] if args.algorithm else []
    out: dict = {"config": args.config, "rounds": args.rounds, "algorithm": args.algorithm}
    for label, extra in (
        ("no_eval", ["eval.every_iterations=1000000", "eval.nodes=1", "eval.test_samples=1"]),
        ("eval", [f"eval.every_iterations={args.eval_every}"]),
    ):
        cfg = _cfg(args.config, [*algo, f"stop.iterations={args.rounds}", *extra])
        t0 = time.perf_counter()
        setup = build_setup(cfg)
        t1, c1 = time.perf_counter(), time.process_time()
        sim = Simulator(setup)
        sim.run()
        t2, c2 = time.perf_counter(), time.process_time()
        evals = len({r[0] for r in sim.recorder.rows if r[3] == "test_acc_mean"})
        out[label] = {
            "setup_s": t1 - t0,
            "run_s": t2 - t1,
            # CPU seconds of this process: what the run costs without the other processes'
            # competition for the core (wall time includes waiting for it)
            "run_cpu_s": c2 - c1,
            "eval_s": sim.eval_wall,
            "evaluations": evals,
            "per_round_s": (t2 - t1 - sim.eval_wall) / args.rounds,
        }
        print(label, json.dumps(out[label]), flush=True)
    per_round = out["no_eval"]["per_round_s"]
    # evaluations after round 0 (identical models at round 0 are evaluated once: cheap)
    per_eval = out["eval"]["eval_s"] / max(1, out["eval"]["evaluations"] - 1)
    rounds, every = base.stop.iterations, base.eval.every_iterations
    n_evals = rounds // every + 1 if every else 0
    out["estimate"] = {
        "per_round_s": per_round,
        "per_eval_s": per_eval,
        "full_run_rounds": rounds,
        "full_run_evals": n_evals,
        "full_run_h": (rounds * per_round + n_evals * per_eval) / 3600,
        "train_only_h": rounds * per_round / 3600,
    }
    print("estimate", json.dumps(out["estimate"]), flush=True)
    return out


def _per_sample(ev: BatchedEvaluator, params: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, test samples) hits and losses of every model on the whole test set."""
    first, inverse = distinct_rows(params)
    n_test = len(ev.test_y)
    hits = np.zeros((len(first), n_test), dtype=np.float64)
    losses = np.zeros_like(hits)
    with torch.inference_mode():
        for row, i in enumerate(first):
            p = params[i : i + 1].to(torch.float32)
            for s in range(0, n_test, ev.batch_size):
                b = torch.arange(s, min(s + ev.batch_size, n_test))
                out = ev.spec.stacked_forward_shared(p, ev.test_x[b])
                loss, hit = ev._per_sample(out, ev.test_y[b][None])
                hits[row, s : s + len(b)] = hit[0].numpy()
                losses[row, s : s + len(b)] = loss[0].numpy()
    return hits[inverse.numpy()], losses[inverse.numpy()]


def error(args) -> dict:
    torch.set_num_threads(1)
    extra = [f"stop.iterations={args.rounds}", f"eval.every_iterations={args.every}"]
    nodes = load_config(args.config).nodes
    full_cfg = _cfg(args.config, [*extra, f"eval.nodes={nodes}", "eval.test_samples=1000000000"])
    # the config's own subsets (its eval.nodes / eval.test_samples, drawn from its seed)
    own = build_setup(_cfg(args.config, extra))
    setup = build_setup(full_cfg)
    assert len(setup.eval_nodes) == full_cfg.nodes and setup.eval_subset is None
    sim = Simulator(setup)
    snaps: list[tuple[int, torch.Tensor]] = []

    def capture(params, test_indices=None, subset=None):
        it = min(p.iteration for p in sim.protocols)
        snaps.append((it, params.detach().clone()))
        zeros = torch.zeros(params.shape[0], dtype=torch.float64)
        return {"loss": zeros, "acc": zeros.clone()}

    sim.evaluator.evaluate = capture
    t0 = time.perf_counter()
    sim.run()
    train_s = time.perf_counter() - t0
    ev = BatchedEvaluator(setup.model, setup.dataset.test_x, setup.dataset.test_y)
    rng = np.random.default_rng(12345)
    points = []
    for it, params in snaps:
        t1 = time.perf_counter()
        hits, losses = _per_sample(ev, params)
        eval_s = time.perf_counter() - t1
        n, m = hits.shape
        full_acc, full_loss = hits.mean(), losses.mean()
        sub_n, sub_s = own.eval_nodes, own.eval_subset
        cheap_acc = hits[np.ix_(sub_n, sub_s)].mean()
        cheap_loss = losses[np.ix_(sub_n, sub_s)].mean()
        node_acc = hits.mean(1)
        point = {
            "round": it,
            "full_acc": full_acc,
            "full_loss": full_loss,
            "config_acc": cheap_acc,
            "config_loss": cheap_loss,
            "config_acc_error": cheap_acc - full_acc,
            "config_loss_error": cheap_loss - full_loss,
            "node_acc_std": node_acc.std(),
            "node_acc_min": node_acc.min(),
            "node_acc_max": node_acc.max(),
            "full_eval_s": eval_s,
            "draws": {},
        }
        for k, s in SIZES:
            errs = []
            for _ in range(500):
                ni = rng.choice(n, size=min(k, n), replace=False)
                si = rng.choice(m, size=min(s, m), replace=False)
                errs.append(hits[np.ix_(ni, si)].mean() - full_acc)
            e = np.abs(errs)
            point["draws"][f"{k}x{s}"] = {"rms": float(np.sqrt(np.mean(e**2))), "max": e.max()}
        points.append(point)
        print(json.dumps(point, default=float), flush=True)
    return {"config": args.config, "train_s": train_s, "points": points}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["cost", "error"])
    p.add_argument("config")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--every", type=int, default=20, help="error: rounds between snapshots")
    p.add_argument("--eval-every", type=int, default=5, help="cost: rounds between evaluations")
    p.add_argument("--algorithm", default=None, help="cost: another algorithm than the config's")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = cost(args) if args.mode == "cost" else error(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()
