"""Median transfer time of messages to or from a straggler, by when they were sent.

    python docs/figures/fidelity/by_send_time.py RUN_DIR [RUN_DIR ...]

Prints one markdown row per run directory (each with messages.csv): the median over the
messages sent in each window of seconds since the run's first send, with their count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from peerlearn.results.messages import read_messages_csv

sys.path.insert(0, str(Path(__file__).parent))
from analyze import slow_nodes

WINDOWS = [(0, 2), (2, 5), (5, 10), (10, 20), (20, 30), (30, 45), (45, 60)]


def main() -> None:
    print("| run | " + " | ".join(f"sent {a}–{b} s" for a, b in WINDOWS) + " |")
    print("|---|" + "---|" * len(WINDOWS))
    for run in map(Path, sys.argv[1:]):
        log = read_messages_csv(run / "messages.csv")
        slow = slow_nodes(run)
        sent, transfer = np.asarray(log.sent_s), np.asarray(log.transfer_s)
        straggler = slow[log.src] | slow[log.dst]
        since = sent - sent.min()
        cells = []
        for a, b in WINDOWS:
            sel = straggler & (since >= a) & (since < b)
            cells.append(f"{np.median(transfer[sel]):.1f} ({sel.sum()})" if sel.any() else "–")
        print(f"| {run.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
