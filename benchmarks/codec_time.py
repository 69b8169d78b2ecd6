"""What JWINS's codec and wavelet cost per node and round, next to one local SGD step.

GN-LeNet (89,834 parameters), sym2 at level 4, degree 4. Times the pieces a JWINS node runs each
round (sender: two forward transforms, top-k, Elias + fpzip encoding; receiver: fill-in and
weighted sum, inverse transform, the accumulator's forward transform; the real runtime also
decodes every neighbour's message), the whole protocol round through the ``JWINS`` object, and
one SGD step at batch 8 with ``BatchedTrainer.run_one_reference`` (and the batched path).

    python benchmarks/codec_time.py [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from peerlearn.codecs import elias
from peerlearn.codecs.floats import FPZIP, RAW, float_codec, fpzip_version
from peerlearn.codecs.message import Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.config.algorithms_sparse import JWINSConfig
from peerlearn.models.zoo import build_model
from peerlearn.protocols.base import MessageArrived, NodeContext, Send, TrainingDone
from peerlearn.protocols.jwins import JWINS
from peerlearn.protocols.sparse import top_k_indices
from peerlearn.protocols.wavelet import FlatWavelet

ALPHAS = (0.1, 0.25, 0.4, 1.0)


def timeit(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in ms (after one warm-up call)."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rep = args.repeats

    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    x = spec.init_vector().numpy()
    n = x.size
    rng = np.random.default_rng(0)
    x_trained = x + (0.01 * rng.standard_normal(n)).astype(np.float32)
    w = FlatWavelet(n, "sym2", 4)
    codec = float_codec("auto")
    print(f"GN-LeNet: {n} parameters, {w.length} wavelet coefficients (sym2, level 4)")
    print(f"float codec: {codec.name} (fpzip {fpzip_version() or 'not available'})")
    print(f"torch threads: {torch.get_num_threads()}\n")

    print("pieces (median ms):")
    coeffs = w.forward(x_trained)
    t_fwd = timeit(lambda: w.forward(x_trained), rep)
    t_inv = timeit(lambda: w.inverse(coeffs), rep)
    print(f"  W(x)  forward transform           {t_fwd:7.2f}")
    print(f"  W^-1  inverse transform           {t_inv:7.2f}")
    score = np.abs(w.forward(x_trained - x))
    for alpha in ALPHAS:
        k = round(alpha * w.length)
        idx = top_k_indices(score, k)
        vals = coeffs[idx]
        blob = elias.encode(idx)
        packed = codec.encode(vals)
        row = [
            timeit(lambda k=k: top_k_indices(score, k), rep) if alpha < 1 else 0.0,
            timeit(lambda idx=idx: elias.encode(idx), rep) if alpha < 1 else 0.0,
            timeit(lambda vals=vals: codec.encode(vals), rep),
            timeit(lambda blob=blob: elias.decode(blob), rep) if alpha < 1 else 0.0,
            timeit(lambda packed=packed: codec.decode(packed), rep),
        ]
        size = (len(blob) if alpha < 1 else 0) + len(packed)
        print(
            f"  alpha={alpha:<4}  top-k {row[0]:6.2f}  elias enc {row[1]:6.2f}  "
            f"{codec.name} enc {row[2]:6.2f}  elias dec {row[3]:6.2f}  {codec.name} dec "
            f"{row[4]:6.2f}   size {size / (4 * n):.3f} of raw"
        )
    if codec is FPZIP:
        print(f"  (raw float32 encode instead: {timeit(lambda: RAW.encode(coeffs), rep):.2f} ms)")

    print("\nwhole JWINS round for one node of degree 4 (median ms):")
    for alpha in ALPHAS:
        model = torch.from_numpy(x.copy())
        ctx = NodeContext(0, 5, (1, 2, 3, 4), model, np.random.default_rng(0))
        node = JWINS(ctx, JWINSConfig(fixed_alpha=alpha), local_steps=3, max_iterations=None)
        theirs = PartialPayload(coeffs[: w.length], None, 4, codec)
        if alpha < 1:
            idx = top_k_indices(score, round(alpha * w.length))
            theirs = PartialPayload(coeffs[idx], idx, 4, codec)
        send_ms, merge_ms, decode_ms = [], [], []
        for _ in range(rep):
            model.copy_(torch.from_numpy(x_trained))
            t0 = time.perf_counter()
            acts = node.handle(TrainingDone(3))
            t1 = time.perf_counter()
            assert any(isinstance(a, Send) for a in acts)
            for j in (1, 2, 3, 4):
                node.handle(MessageArrived(Message(j, 0, "model", node.iteration, theirs)))
            t2 = time.perf_counter()
            wire = theirs.encode()
            for _ in range(4):
                PartialPayload.decode(wire)
            t3 = time.perf_counter()
            send_ms.append(t1 - t0)
            merge_ms.append(t2 - t1)
            decode_ms.append(t3 - t2)
        s, m, d = (1e3 * statistics.median(v) for v in (send_ms, merge_ms, decode_ms))
        print(
            f"  alpha={alpha:<4}  send side {s:6.2f}  merge side {m:6.2f}  "
            f"(+ decoding 4 messages, real runtime only: {d:6.2f})  total {s + m + d:6.2f}"
        )

    print("\none local SGD step, batch 8 (median ms):")
    gen = torch.Generator().manual_seed(0)
    train_x = torch.randn(256, 3, 32, 32, generator=gen)
    train_y = torch.randint(0, 10, (256,), generator=gen)
    trainer = BatchedTrainer(spec, train_x, train_y, lr=0.01)
    start = spec.init_vector()
    job = TrainJob(start, torch.randint(0, 256, (1, 8), generator=gen))
    t1 = timeit(lambda: trainer.run_one_reference(job), rep)
    print(f"  run_one_reference, 1 step        {t1:7.2f}")
    jobs3 = TrainJob(start, torch.randint(0, 256, (3, 8), generator=gen))
    t3 = timeit(lambda: trainer.run_one_reference(jobs3), rep)
    print(f"  run_one_reference, 3 steps       {t3:7.2f}   (one CIFAR round of the authors)")
    many = [TrainJob(start, torch.randint(0, 256, (1, 8), generator=gen)) for _ in range(16)]
    t16 = timeit(lambda: trainer.run(many), max(3, rep // 4))
    print(f"  batched run, 16 nodes x 1 step   {t16:7.2f}   ({t16 / 16:.2f} per node)")


if __name__ == "__main__":
    main()
