"""Per-message log (``messages.csv``): when each delivered message was sent and when it arrived.

Written when ``eval.log_messages = true``, by both engines, so that a simulated run and a deployed
one can be compared message by message (``docs/fidelity.md``). ``sent_s`` is the instant the
protocol emitted the ``Send`` (the message then waits in its sender's queue, then crosses the
links); ``delivered_s`` is when the receiver's protocol got it. Their difference is the
transfer time, queueing included. Times are virtual seconds (simulator) or wall seconds since the
common start (deploy). Messages dropped before delivery are not listed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("src", "dst", "kind", "iteration", "bytes", "sent_s", "delivered_s")

#: one row, in COLUMNS order
MessageRow = tuple[int, int, str, int, int, float, float]


def write_messages_csv(path: Path, rows: list[MessageRow]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for src, dst, kind, it, nbytes, sent, delivered in rows:
            # float(): engine times may be NumPy scalars, whose repr is not a plain number
            w.writerow((src, dst, kind, it, nbytes, repr(float(sent)), repr(float(delivered))))


@dataclass
class MessageLog:
    """``messages.csv`` as columns."""

    src: np.ndarray
    dst: np.ndarray
    kind: np.ndarray
    iteration: np.ndarray
    nbytes: np.ndarray
    sent_s: np.ndarray
    delivered_s: np.ndarray

    @property
    def transfer_s(self) -> np.ndarray:
        return self.delivered_s - self.sent_s

    def __len__(self) -> int:
        return len(self.src)


def read_messages_csv(path: Path) -> MessageLog:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise ValueError(f"{path}: not a messages.csv (header must be {','.join(COLUMNS)})")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if len(row) != len(COLUMNS):
            raise ValueError(f"{path}:{line}: {len(row)} fields, expected {len(COLUMNS)}")
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
    return MessageLog(
        src=np.array(cols[0], dtype=np.int64),
        dst=np.array(cols[1], dtype=np.int64),
        kind=np.array(cols[2], dtype=str),
        iteration=np.array(cols[3], dtype=np.int64),
        nbytes=np.array(cols[4], dtype=np.int64),
        sent_s=np.array(cols[5], dtype=np.float64),
        delivered_s=np.array(cols[6], dtype=np.float64),
    )


def transfer_stats(log: MessageLog) -> dict[str, float | int | None]:
    """Delivered messages and their transfer time's median, 10th and 90th percentiles (s)."""
    t = log.transfer_s
    if not len(t):
        return {"messages": 0, "median": None, "p10": None, "p90": None}
    p10, median, p90 = np.percentile(t, [10, 50, 90])
    return {"messages": len(t), "median": float(median), "p10": float(p10), "p90": float(p90)}


def match_deployed(
    sent: dict[int, list[tuple[int, int, str, int, int, float]]],
    received: dict[int, list[tuple[int, int, int, int, float]]],
) -> tuple[list[MessageRow], int]:
    """Pair each node's sent frames with their receivers' arrivals.

    ``sent[i]``: (dst, seq, kind, iteration, bytes, sent_s) for every frame node i handed to
    ZeroMQ, seq counting per destination; ``received[j]``: (src, seq, iteration, bytes,
    arrived_s), seq counting per sender. TCP keeps each pair in order, so the k-th frame i handed
    over for j is the k-th j received from i; a pair whose iteration or size disagree is not
    matched (counted in the second return value, with frames never received).
    """
    arrivals: dict[tuple[int, int, int], tuple[int, int, float]] = {}
    for dst, rows in received.items():
        for src, seq, it, nbytes, t in rows:
            arrivals[(src, dst, seq)] = (it, nbytes, t)
    out: list[MessageRow] = []
    unmatched = 0
    for src, rows in sent.items():
        for dst, seq, kind, it, nbytes, t_sent in rows:
            got = arrivals.get((src, dst, seq))
            if got is None or got[0] != it or got[1] != nbytes:
                unmatched += 1
                continue
            out.append((src, dst, kind, it, nbytes, t_sent, got[2]))
    out.sort(key=lambda r: (r[6], r[0], r[1]))
    return out, unmatched
