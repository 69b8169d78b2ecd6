"""Tables and plots for docs/reproduction_jwins.md from peerlearn run directories.

usage: python docs/figures/jwins/analyze.py OUT_PREFIX METRIC TARGETS BUDGETS_MB RUN_DIR...
  METRIC: test_acc (higher is better) or test_rmse (lower is better)
  TARGETS, BUDGETS_MB: comma-separated; RUN_DIR: peerlearn run dirs (metrics.csv, summary.json),
  the first one is the full-sharing baseline. Every number comes from the node -1 aggregate rows
  (mean over the evaluated nodes) at evaluation times: rounds = iteration_mean, bytes =
  bytes_sent_mean (all bytes a node sent, headers and metadata included).
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load(run):
    rows = defaultdict(dict)  # time -> metric -> value
    with open(Path(run) / "metrics.csv") as f:
        for r in csv.DictReader(f):
            if r["node"] == "-1":
                rows[float(r["time_s"])][r["metric"]] = float(r["value"])
    m = sys.argv[2]
    pts = [
        (t, d["iteration_mean"], d["bytes_sent_mean"] / 1e6, d[m + "_mean"], d[m + "_std"])
        for t, d in sorted(rows.items())
        if m + "_mean" in d and d[m + "_mean"] == d[m + "_mean"]  # NaN (diverged) left out
    ]
    return json.load(open(Path(run) / "summary.json")), pts


def main():
    prefix, metric = sys.argv[1], sys.argv[2]
    targets = [float(x) for x in sys.argv[3].split(",")]
    budgets = [float(x) for x in sys.argv[4].split(",")]
    runs = sys.argv[5:]
    better = (lambda a, b: a >= b) if metric == "test_acc" else (lambda a, b: a <= b)
    data = {}
    for r in runs:
        s, pts = load(r)
        name = Path(r).name
        data[name] = (s, pts)
    base = Path(runs[0]).name
    print(
        f"| run | rounds | virtual s | MB sent/node | MB/node/round | final {metric} mean ± std |"
    )
    print("|---|---|---|---|---|---|")
    for name, (_, pts) in data.items():
        t, it, mb, v, sd = pts[-1]
        print(f"| {name} | {it:.0f} | {t:.1f} | {mb:.1f} | {mb / it:.3f} | {v:.4f} ± {sd:.4f} |")

    def first(pts, target):
        for p in pts:
            if better(p[3], target):
                return p
        return None

    print(
        f"\nfirst evaluation reaching each target: rounds / MB per node / virtual s "
        f"(saved = bytes saved vs {base} at that target; x = the other's MB / this MB)"
    )
    hdr = "| target | " + " | ".join(data) + " |"
    print(hdr + "\n|" + "---|" * (len(data) + 1))
    for tg in targets:
        cells, b0 = [], first(data[base][1], tg)
        for name, (_, pts) in data.items():
            p = first(pts, tg)
            if p is None:
                cells.append("not reached")
                continue
            c = f"{p[1]:.0f} r / {p[2]:.1f} MB / {p[0]:.1f} s"
            if b0 is not None and name != base:
                c += f" (saved {100 * (b0[2] - p[2]) / b0[2]:.0f} %)"
            cells.append(c)
        print(f"| {tg} | " + " | ".join(cells) + " |")
    if "jwins" in data and "choco" in data:
        print("\nCHOCO / JWINS at each target (MB ratio, virtual-time ratio, round ratio):")
        for tg in targets:
            pj, pc = first(data["jwins"][1], tg), first(data["choco"][1], tg)
            if pj and pc:
                print(
                    f"  {tg}: MB x{pc[2] / pj[2]:.2f}, time x{pc[0] / pj[0]:.2f}, "
                    f"rounds x{pc[1] / pj[1]:.2f}"
                )
            else:
                print(f"  {tg}: jwins {'yes' if pj else 'no'}, choco {'yes' if pc else 'no'}")
    print(f"\nbest {metric} mean reached within a budget of MB sent per node:")
    print("| budget MB | " + " | ".join(data) + " |\n|" + "---|" * (len(data) + 1))
    for b in budgets:
        cells = []
        for _, pts in data.values():
            vals = [p[3] for p in pts if p[2] <= b]
            best = (max if metric == "test_acc" else min)(vals) if vals else None
            cells.append("-" if best is None else f"{best:.4f}")
        print(f"| {b:g} | " + " | ".join(cells) + " |")

    axes = ((1, "round (mean over nodes)", "rounds"), (2, "MB sent per node", "mb"))
    for xi, xlabel, tag in axes:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name, (_, pts) in data.items():
            x = [p[xi] for p in pts]
            y = [p[3] for p in pts]
            sd = [p[4] for p in pts]
            ax.plot(x, y, label=name, marker=".", ms=3)
            lo = [a - b for a, b in zip(y, sd, strict=True)]
            hi = [a + b for a, b in zip(y, sd, strict=True)]
            ax.fill_between(x, lo, hi, alpha=0.12)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (mean ± std over evaluated nodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{prefix}_{metric}_vs_{tag}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
