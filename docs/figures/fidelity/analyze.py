"""Simulated vs emulated runs, message by message (docs/fidelity.md).

    python docs/figures/fidelity/analyze.py OUT_PREFIX LABEL=SIM_DIR,EMU_DIR[,EMU_DIR...] ...

Each run directory must hold messages.csv (eval.log_messages = true). Several emulated
directories of one label are repetitions: their medians are reported each, their curves drawn
each. Prints one markdown table per label and writes OUT_PREFIX_*.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from peerlearn.config import load_config
from peerlearn.experiment import network_spec
from peerlearn.results.messages import MessageLog, read_messages_csv
from peerlearn.results.metrics import read_metrics_csv
from peerlearn.results.plots import mean_curve

CLASSES = ("fast→fast", "fast→slow", "slow→fast", "slow→slow")


def slow_nodes(run: Path) -> np.ndarray:
    """Nodes whose uplink is below the fastest one's (the stragglers of the preset)."""
    spec = network_spec(load_config(run / "config.toml", []))
    up = np.asarray(spec.up_Bps)
    return up < up.max()


def classes(log: MessageLog, slow: np.ndarray) -> dict[str, np.ndarray]:
    s, d = slow[log.src], slow[log.dst]
    return {
        "all": np.ones(len(log), dtype=bool),
        "fast→fast": ~s & ~d,
        "fast→slow": ~s & d,
        "slow→fast": s & ~d,
        "slow→slow": s & d,
        "to or from slow": s | d,
    }


def load(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    log = read_messages_csv(run / "messages.csv")
    rec = read_metrics_csv(run / "metrics.csv")
    per_node_it = summary["iterations"].get("per_node")
    return {
        "run": run,
        "summary": summary,
        "log": log,
        "rec": rec,
        "slow": slow_nodes(run),
        "iterations": None if per_node_it is None else np.array(per_node_it),
    }


def fmt(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


def med(x: np.ndarray) -> float:
    return float(np.median(x)) if len(x) else float("nan")


def report(label: str, sim: dict, emus: list[dict]) -> None:
    print(f"\n### {label}\n")
    head = ["", "simulated"] + [f"emulated #{k + 1}" for k in range(len(emus))]
    head += ["emulated / simulated"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def row(name: str, fn, ratio: bool = True) -> None:
        vals = [fn(sim)] + [fn(e) for e in emus]
        cells = [name] + [fmt(v) for v in vals]
        if ratio and vals[0] and np.isfinite(vals[0]):
            rs = [v / vals[0] if v is not None else np.nan for v in vals[1:]]
            cells.append(", ".join(f"{r:.2f}" for r in rs))
        else:
            cells.append("")
        print("| " + " | ".join(cells) + " |")

    for name in ("all", *CLASSES, "to or from slow"):

        def median_of(r: dict, name: str = name) -> float:
            return med(r["log"].transfer_s[classes(r["log"], r["slow"])[name]])

        row(f"median transfer s, {name}", median_of)

    def p90(r: dict) -> float:
        return float(np.percentile(r["log"].transfer_s, 90))

    row("90th pct transfer s, all", p90)
    row("messages delivered", lambda r: float(len(r["log"])))
    row("MB sent per node", lambda r: r["summary"]["bytes"]["sent_per_node_mean"] / 1e6)
    row(
        "MB delivered per node", lambda r: r["summary"]["bytes"]["delivered"] / 1e6 / len(r["slow"])
    )
    row("iterations per node, mean", lambda r: r["summary"]["iterations"]["mean"])
    row(
        "iterations, slow nodes mean",
        lambda r: float(r["iterations"][r["slow"]].mean()) if r["iterations"] is not None else None,
    )
    row("final acc mean", lambda r: r["summary"]["final"].get("test_acc_mean", np.nan))
    row(
        "final acc std over nodes",
        lambda r: r["summary"]["final"].get("test_acc_std", np.nan),
        False,
    )
    if sim["iterations"] is not None:
        for k, e in enumerate(emus):
            if e["iterations"] is not None:
                dev = np.abs(e["iterations"] / sim["iterations"] - 1).max()
                print(f"\nemulated #{k + 1}: largest per-node iteration difference {dev:.1%}")


def plots(prefix: str, runs: dict[str, tuple[dict, list[dict]]]) -> None:
    # transfer-time CDFs by class, one panel per label
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
    for ax, (label, (sim, emus)) in zip(axes[0], runs.items(), strict=True):
        for ci, name in enumerate(CLASSES):
            color = f"C{ci}"
            for r, style in [(sim, "-")] + [(e, "--") for e in emus]:
                t = np.sort(r["log"].transfer_s[classes(r["log"], r["slow"])[name]])
                if len(t):
                    ax.plot(
                        t,
                        np.arange(1, len(t) + 1) / len(t),
                        style,
                        color=color,
                        lw=1.2,
                        label=f"{name} {'sim' if r is sim else 'emu'}",
                    )
        ax.set_xscale("log")
        _panel(
            ax,
            label,
            "transfer time (s): Send to delivery, queueing included",
            "fraction of delivered messages",
        )
    _save(fig, f"{prefix}_transfer_cdf.png")

    # accuracy vs time, mean ± std over nodes
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
    for ax, (label, (sim, emus)) in zip(axes[0], runs.items(), strict=True):
        for k, r in enumerate([sim, *emus]):
            t, m, s = mean_curve(r["rec"], "test_acc")
            name = "simulated" if k == 0 else f"emulated #{k}"
            ax.plot(t, m, "-" if k == 0 else "--", label=name)
            ax.fill_between(t, m - s, m + s, alpha=0.15)
        _panel(
            ax,
            label,
            "time (s): virtual (sim) / wall since start (emulated)",
            "test accuracy, mean ± std over nodes",
        )
    _save(fig, f"{prefix}_accuracy.png")

    # transfer time against send time (backlogs that grow show up as rising medians)
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
    for ax, (label, (sim, emus)) in zip(axes[0], runs.items(), strict=True):
        for r, style in [(sim, "-")] + [(e, "--") for e in emus]:
            log = r["log"]
            for ci, name in enumerate(("slow→fast", "fast→fast")):
                sel = classes(log, r["slow"])[name]
                edges = np.arange(0, log.sent_s.max() + 5, 5)
                idx = np.digitize(log.sent_s[sel], edges)
                x = [edges[i - 1] + 2.5 for i in np.unique(idx)]
                y = [np.median(log.transfer_s[sel][idx == i]) for i in np.unique(idx)]
                ax.plot(
                    x, y, style, color=f"C{ci + 2}", label=f"{name} {'sim' if r is sim else 'emu'}"
                )
        ax.set_yscale("log")
        _panel(ax, label, "send time (s)", "median transfer time (s), 5 s bins")
    _save(fig, f"{prefix}_transfer_vs_time.png")


def _panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    """Labels, grid, and one legend entry per label (runs of one kind share a label)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    prefix, specs = argv[0], argv[1:]
    runs: dict[str, tuple[dict, list[dict]]] = {}
    for spec in specs:
        label, dirs = spec.split("=", 1)
        paths = [Path(p) for p in dirs.split(",")]
        runs[label] = (load(paths[0]), [load(p) for p in paths[1:]])
    for label, (sim, emus) in runs.items():
        report(label, sim, emus)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    plots(prefix, runs)


if __name__ == "__main__":
    main(sys.argv[1:])
