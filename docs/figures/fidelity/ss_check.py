"""The autotuned send-buffer model against ``ss -tmi`` samples (docs/fidelity.md).

    python docs/figures/fidelity/ss_check.py CONFIG.toml SAMPLES.txt [SAMPLES.txt ...]

SAMPLES are what ss_sample.sh wrote during ``peerlearn deploy --emulate`` runs of CONFIG. For
each sampled node and sample time, over the node's sending sockets (more bytes acknowledged
than received), prints the median measured send buffer (``tb``) and send queue
(``Send-Q``) next to what ``Autotune`` gives for the socket's ``bytes_acked`` on its path, for
the congestion control each socket reports.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from peerlearn.config import load_config
from peerlearn.experiment import network_spec
from peerlearn.sim.send_buffer import AUTOTUNE, SHAPER_QUEUE_PACKETS

_HEAD = re.compile(r"^## (\S+) node (\d+) ")
_SOCK = re.compile(r"^\d+\s+(\d+)\s+\S+:\d+\s+(\S+):(\d+)")


def parse(path: Path) -> list[dict]:
    """One row per sending socket per sample: t (s since the file's first sample), node, peer
    (node id from the address), sendq, tb, acked, cc."""
    rows: list[dict] = []
    t0 = head = sock = None
    for line in path.read_text().splitlines():
        if m := _HEAD.match(line):
            t = float(m.group(1))
            t0 = t if t0 is None else t0
            head = (t - t0, int(m.group(2)))
        elif (m := _SOCK.match(line)) and head is not None:
            sock = (int(m.group(1)), m.group(2))
        elif "skmem" in line and sock is not None:
            acked = re.search(r" bytes_acked:(\d+)", line)
            got = re.search(r" bytes_received:(\d+)", line)
            tb = re.search(r"[(,]tb(\d+)", line)
            cc = next((name for name in AUTOTUNE if f" {name} " in line), None)
            # a sending socket: it has had more acknowledged than it received (a greeting)
            received = int(got.group(1)) if got else 0
            if acked and tb and cc and int(acked.group(1)) > received:
                peer = int(sock[1].rsplit(".", 1)[1]) - 1  # emulate_subnet: node i is .i+1
                rows.append(
                    dict(t=head[0], node=head[1], peer=peer, sendq=sock[0],
                         tb=int(tb.group(1)), acked=int(acked.group(1)), cc=cc)
                )  # fmt: skip
            sock = None
    return rows


def main() -> None:
    cfg = load_config(sys.argv[1], [])
    spec = network_spec(cfg)
    up, down = np.asarray(spec.up_Bps), np.asarray(spec.down_Bps)
    k = cfg.nodes - 1  # every node opens a connection to every other (full topology)
    for path in map(Path, sys.argv[2:]):
        rows = parse(path)
        print(f"\n{path}: median over a node's sending sockets, MB")
        print("| s | node | sockets | tb measured | tb model | Send-Q measured | payload model |")
        print("|---|---|---|---|---|---|---|")
        keys = sorted({(r["t"], r["node"]) for r in rows})
        for t, node in keys:
            sel = [r for r in rows if r["t"] == t and r["node"] == node]
            model_tb, model_q = [], []
            for r in sel:
                tune = AUTOTUNE[r["cc"]]
                # the bottleneck's queue and the connections sharing it: the slower access link
                cap = min(up[r["node"]], down[r["peer"]])
                rtt = 2 * float(np.asarray(spec.latency_s).max())
                path_segs = (cap * rtt / tune.mss + SHAPER_QUEUE_PACKETS) / k
                model_tb.append(tune.sndbuf(r["acked"], path_segs))
                model_q.append(tune.kernel_bytes(r["acked"], path_segs))
            med = lambda xs: float(np.median(xs)) / 1e6  # noqa: E731
            print(
                f"| {t:.0f} | {node} | {len(sel)} | {med([r['tb'] for r in sel]):.2f} | "
                f"{med(model_tb):.2f} | {med([r['sendq'] for r in sel]):.2f} | {med(model_q):.2f} |"
            )


if __name__ == "__main__":
    main()
