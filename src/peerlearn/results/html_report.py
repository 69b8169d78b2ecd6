"""``peerlearn report DIR... -o report.html``: one self-contained HTML page for sweeps.

Everything is inline (CSS, SVG plots from matplotlib, no script or font from the network), so
the file can be mailed or archived and opens offline. Per sweep directory: the comparison table
(mean ± 95% CI over seeds, time-to-target, paired ratios), accuracy and loss against virtual
time and against MB sent per node with bands over seeds, the per-node spread (min-max over
nodes, averaged over seeds), the config keys that differ between groups, and the versions.
"""

from __future__ import annotations

import html
import io
import json
import platform
import re
import tomllib
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from peerlearn.config.load import ConfigError
from peerlearn.results.metrics import read_metrics_csv
from peerlearn.results.stats import fmt_ci, fmt_ratio, fmt_target

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f4f4f4}.plots{display:flex;flex-wrap:wrap;gap:1em}
.plot{flex:0 1 calc(50% - .5em);min-width:480px}.plot svg{width:100%;height:auto}
.note{color:#666;font-size:.85em}
.warn{color:#a00;font-weight:bold}
"""


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    # no XML prolog, and no RDF metadata block (a creation date: reports of the same runs are
    # byte-identical; and namespace URLs that look like links)
    return re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _load_sweep(d: Path) -> dict[str, Any]:
    try:
        index = json.loads((d / "sweep.json").read_text())
        stats = json.loads((d / "stats.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{d} is not a finished sweep directory: {exc}") from None
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in index["runs"]:
        if r["status"] == "finished":
            groups.setdefault(r["group"], []).append(r)
    return {"index": index, "stats": stats, "groups": groups}


def _curve_plot(stats: dict[str, Any], metric: str, x: str) -> str | None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for g, s in stats["groups"].items():
        c = s.get("curve")
        if not c or metric not in c:
            continue
        m, lo, hi = (np.array(c[metric][k], dtype=float) for k in ("mean", "lo", "hi"))
        if x == "time":
            xs = np.array(c["time_s"])
        elif "bytes_sent_mean" in c:
            xs = np.array(c["bytes_sent_mean"]["mean"]) / 1e6
        else:
            continue
        ax.plot(xs, m, label=f"{g} (n={s['n']})")
        ax.fill_between(xs, lo, hi, alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("virtual time (s)" if x == "time" else "MB sent per node (mean over seeds)")
    ax.set_ylabel(metric.removesuffix("_mean").replace("_", " ") + " (mean over nodes)")
    ax.set_title("mean over seeds, band: 95% CI (t)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def _spread_plot(d: Path, groups: dict[str, list[dict[str, Any]]]) -> str | None:
    """Per-node spread: min and max over nodes of the test accuracy, averaged over seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for k, (g, runs) in enumerate(groups.items()):
        lows, highs, means, times = [], [], [], None
        for r in runs:
            rec = read_metrics_csv(d / r["dir"] / "metrics.csv")
            series = {m: rec.series(f"test_acc_{m}") for m in ("min", "max", "mean")}
            if not series["mean"]:
                continue
            t = [p[0] for p in series["mean"]]
            if times is not None and t != times:
                continue
            times = t
            lows.append([p[1] for p in series["min"]])
            highs.append([p[1] for p in series["max"]])
            means.append([p[1] for p in series["mean"]])
        if times is None:
            continue
        color = f"C{k % 10}"
        ax.plot(times, np.mean(means, axis=0), color=color, label=g)
        ax.fill_between(
            times, np.mean(lows, axis=0), np.mean(highs, axis=0), color=color, alpha=0.15
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("per-node spread: band = min..max over nodes (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def _table(stats: dict[str, Any]) -> str:
    targets = [str(t) for t in stats.get("targets", [])]
    has_ratio = any(s.get("vs_baseline") for s in stats["groups"].values())
    head = ["group", "seeds", "final acc", "final loss"]
    head += [f"time to {t} (s)" for t in targets]
    head += [f"MB to {t}" for t in targets]
    if has_ratio:
        head += [f"speedup to {t}" for t in targets] + ["final acc ratio"]
    rows = []
    for g, s in stats["groups"].items():
        cells = [
            g,
            str(s["n"]),
            fmt_ci(s["final"].get("test_acc_mean", {})),
            fmt_ci(s["final"].get("test_loss_mean", {})),
        ]
        for key, scale, budget in (
            ("time_to_target", 1.0, f"{s['budget_s']:g} s"),
            ("bytes_to_target", 1e6, "budget"),
        ):
            for t in targets:
                e = s.get(key, {}).get(t)
                if e is None:
                    cells.append("-")
                elif not e["reached"]:
                    cells.append(f"not reached (&gt; {budget})")
                else:
                    scaled = {
                        k: (None if e[k] is None else e[k] / scale) for k in ("mean", "lo", "hi")
                    }
                    cells.append(html.escape(fmt_target({**e, **scaled}, s["budget_s"])))
        if has_ratio:
            vb = s.get("vs_baseline", {})
            for t in targets:
                r = vb.get("speedup", {}).get(t)
                cells.append("-" if r is None else f"{fmt_ratio(r)} (n={r['pairs']})")
            r = vb.get("final_acc")
            cells.append("-" if r is None else fmt_ratio(r))
        rows.append(cells)
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for cells in rows:
        out.append(
            "<tr>"
            + "".join(
                f"<td>{c if c.startswith('not reached') else html.escape(c)}</td>" for c in cells
            )
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _config_diff(d: Path, groups: dict[str, list[dict[str, Any]]]) -> str:
    flat = {}
    for g, runs in groups.items():
        cfg = tomllib.loads((d / runs[0]["dir"] / "config.toml").read_text())
        flat[g] = _flatten({k: v for k, v in cfg.items() if k not in ("name", "seed")})
    keys = sorted({k for f in flat.values() for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k)) for f in flat.values()}) > 1]
    if not differing:
        return "<p>All groups share one config (apart from name and seed).</p>"
    out = [
        "<table><tr><th>key</th>" + "".join(f"<th>{html.escape(g)}</th>" for g in flat) + "</tr>"
    ]
    for k in differing:
        out.append(
            f"<tr><td>{html.escape(k)}</td>"
            + "".join(f"<td>{html.escape(json.dumps(f.get(k)))}</td>" for f in flat.values())
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _versions(d: Path, groups: dict[str, list[dict[str, Any]]]) -> str:
    seen = set()
    for runs in groups.values():
        for r in runs:
            v = json.loads((d / r["dir"] / "summary.json").read_text()).get("versions", {})
            seen.add(json.dumps(v, sort_keys=True))
    items = [", ".join(f"{k} {v}" for k, v in json.loads(s).items()) for s in sorted(seen)]
    items.append(f"report: python {platform.python_version()}, matplotlib {matplotlib.__version__}")
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def render_report(dirs: list[Path]) -> str:
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        "<title>peerlearn report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>peerlearn report</h1>",
        "<p class='note'>Means over seeds with 95% Student-t confidence intervals (± half-width). "
        "Time and MB to a target accuracy are interpolated linearly between the two evaluations "
        "that bracket the crossing, averaged over the seeds that reached it (count shown); "
        "ratios are paired by seed (geometric mean, t interval of the log-ratio).</p>",
    ]
    for d in dirs:
        sw = _load_sweep(d)
        stats, groups = sw["stats"], sw["groups"]
        name = sw["index"].get("name", d.name)
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(
            f"<p class='note'>{html.escape(str(d))}: {sum(map(len, groups.values()))} "
            f"finished runs in {len(groups)} groups; baseline: "
            f"{html.escape(str(sw['index'].get('baseline')))}</p>"
        )
        for w in stats.get("warnings", []):
            parts.append(f"<p class='warn'>{html.escape(w)}</p>")
        parts.append("<h3>Comparison</h3>" + _table(stats))
        plots = []
        for metric in ("test_acc_mean", "test_loss_mean", "test_rmse_mean"):
            for x in ("time", "bytes"):
                svg = _curve_plot(stats, metric, x)
                if svg:
                    plots.append(svg)
        spread = _spread_plot(d, groups)
        if spread:
            plots.append(spread)
        parts.append(
            "<h3>Curves</h3><div class='plots'>"
            + "".join(f"<div class='plot'>{p}</div>" for p in plots)
            + "</div>"
        )
        parts.append("<h3>Config differences between groups</h3>" + _config_diff(d, groups))
        parts.append("<h3>Versions</h3>" + _versions(d, groups))
    parts.append("<script>document.body.dataset.ready = 'yes';</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(dirs: list[Path], output: Path) -> Path:
    text = render_report(dirs)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output
