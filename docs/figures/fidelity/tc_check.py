"""Summarise `tc_sample.sh` output: how many bytes the shapers' queues held, in how many packets.

For a node's upload (HTB class on its ``eth0``) and its download (the class on the bridge's
``v<i>``): the backlog's peak in bytes and packets, the bytes per queued packet (pooled over the
samples with a backlog, and their median), drops and requeues at the end, and the bytes per
packet HTB sent, which counts GSO segments, not the super-packets the queue counts
(docs/fidelity.md, "GSO packets in the shapers' queues").

Usage: python tc_check.py TC.txt [NODE ...]   (default node 0)
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict

HEAD = re.compile(r"^## (\S+) (pl\d+-(\S+)) class (\S+)$")
SENT = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits \d+ requeues (\d+)\)")
BACKLOG = re.compile(r"backlog (\d+)b (\d+)p")


def parse(path: str) -> dict[tuple[str, str], list[dict[str, float]]]:
    """(namespace id, device) -> one record per sample of its first (leaf) class."""
    series: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    key, rec = None, None
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        head = HEAD.match(line.strip())
        if head:
            key, rec = (head[3], head[4]), {"t": float(head[1])}
            continue
        if line.startswith("## "):
            key = None
        if key is None or rec is None:
            continue
        if (m := SENT.search(line)) and "sent" not in rec:
            rec.update(sent=int(m[1]), pkts=int(m[2]), dropped=int(m[3]), requeues=int(m[4]))
        elif (m := BACKLOG.search(line)) and "bytes" not in rec:
            rec.update(bytes=int(m[1]), packets=int(m[2]))
            series[key].append(rec)
    return series


def summary(name: str, recs: list[dict[str, float]], t0: float) -> str:
    full = [r for r in recs if r["packets"] > 0]
    if not full:
        return f"{name}: never a backlog ({len(recs)} samples)"
    peak = max(full, key=lambda r: r["bytes"])
    most = max(full, key=lambda r: r["packets"])
    pooled = sum(r["bytes"] for r in full) / sum(r["packets"] for r in full)
    median = statistics.median(r["bytes"] / r["packets"] for r in full)
    last = recs[-1]
    return (
        f"{name}: {len(recs)} samples, {len(full)} with a backlog; peak {peak['bytes'] / 1e6:.2f} "
        f"MB in {peak['packets']:.0f} packets at +{peak['t'] - t0:.0f} s; "
        f"most packets {most['packets']:.0f} ({most['bytes'] / 1e6:.2f} MB); bytes per queued "
        f"packet {pooled:,.0f} pooled, {median:,.0f} median; at the end dropped "
        f"{last['dropped']:.0f}, requeues {last['requeues']:.0f}, sent "
        f"{last['sent'] / max(last['pkts'], 1):,.0f} bytes per counted packet"
    )


def main(path: str, nodes: list[str]) -> None:
    series = parse(path)
    t0 = min(r["t"] for recs in series.values() for r in recs)
    for node in nodes:
        print(summary(f"node {node} upload (eth0)", series.get((node, "eth0"), []), t0))
        print(
            summary(
                f"node {node} download (bridge v{node})", series.get(("br", f"v{node}"), []), t0
            )
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["0"])
