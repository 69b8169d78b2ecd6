"""Statistics over seeds: means with Student-t confidence intervals, time- and bytes-to-target,
paired ratios between variants. Pure functions on numbers; no files.

Rules (also in docs/sweeps.md):

- **Confidence interval** of a mean over n seeds: mean ± t(0.975, n-1) · s / √n with s the
  sample standard deviation (ddof=1). n = 1 gives the mean and no interval (None).
- **Time-to-target** (and bytes-to-target): the mean test accuracy over nodes is known at the
  evaluation times t_0 < t_1 < ...; the crossing of target a is interpolated linearly between the
  two evaluations that bracket it: the first k with acc_k >= a, and
  t = t_{k-1} + (a - acc_{k-1}) / (acc_k - acc_{k-1}) · (t_k - t_{k-1}) (t_0 if acc_0 >= a).
  Bytes-to-target does the same with the mean bytes sent per node at each evaluation as x.
  This differs from summary.json's ``time_to_accuracy_s``, which is the first evaluation time at or
  above the target (no interpolation).
- **Never reached**: a seed that never reaches the target within the budget is reported as
  "not reached (> budget)". The interval is taken only over the seeds that reached it, and the
  count (reached/n) is always shown next to it; with fewer than all seeds it is biased low (the
  slow seeds are the missing ones), which the count makes visible.
- **Paired ratios** between a variant and the baseline: runs are paired by seed (same data,
  partition, network), r_s = x_variant,s / x_baseline,s for every seed where both are defined,
  and the interval is the t interval of mean(log r_s), exponentiated (a geometric-mean ratio).
- **Equal grids**: runs are only combined (over seeds) and compared (over variants) when they
  were evaluated at the same virtual times, on the same number of nodes, the same evaluated
  nodes count and the same test samples; otherwise ``check_grids`` names the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st


def t_quantile(n: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t quantile for n samples (n - 1 degrees of freedom)."""
    return float(_st.t.ppf(0.5 + confidence / 2, n - 1))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """``{"n", "mean", "lo", "hi", "sd"}``; lo/hi/sd None under 2 values, all None for 0."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None, "sd": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "lo": None, "hi": None, "sd": None}
    sd = float(x.std(ddof=1))
    half = t_quantile(n, confidence) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd}


def crossing(x: Sequence[float], y: Sequence[float], target: float) -> float | None:
    """Where y first reaches ``target``, linearly interpolated in x between the two bracketing
    points; x[0] if y[0] already reaches it; None if never."""
    for k, v in enumerate(y):
        if v >= target:
            if k == 0:
                return float(x[0])
            x0, x1, y0, y1 = float(x[k - 1]), float(x[k]), float(y[k - 1]), float(y[k])
            return x0 + (target - y0) / (y1 - y0) * (x1 - x0)
    return None


def curve_ci(curves: Sequence[Sequence[float]], confidence: float = 0.95) -> dict[str, list]:
    """Pointwise mean and t interval of equal-length curves (one per seed)."""
    a = np.asarray(curves, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError("curves must have the same length")
    n = a.shape[0]
    mean = a.mean(axis=0)
    if n < 2:
        return {"mean": mean.tolist(), "lo": mean.tolist(), "hi": mean.tolist()}
    half = t_quantile(n, confidence) * a.std(axis=0, ddof=1) / math.sqrt(n)
    return {"mean": mean.tolist(), "lo": (mean - half).tolist(), "hi": (mean + half).tolist()}


def paired_ratio(
    numerator: Mapping[int, float | None],
    denominator: Mapping[int, float | None],
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Geometric-mean ratio numerator/denominator over seeds present (and positive) in both,
    with the t interval of the mean log-ratio, exponentiated."""
    logs = []
    for seed, a in numerator.items():
        b = denominator.get(seed)
        if a is not None and b is not None and a > 0 and b > 0:
            logs.append(math.log(a / b))
    ci = mean_ci(logs, confidence)

    def exp(v: float | None) -> float | None:
        return None if v is None else math.exp(v)

    return {"pairs": ci["n"], "ratio": exp(ci["mean"]), "lo": exp(ci["lo"]), "hi": exp(ci["hi"])}


# ---------------------------------------------------------------------------------------------
# Runs and groups of runs


@dataclass
class RunCurves:
    """One run's aggregate curves (node -1 rows of metrics.csv) and what its grid depends on."""

    seed: int
    times: np.ndarray
    series: dict[str, np.ndarray]  # metric (test_acc_mean, bytes_sent_mean, ...) -> values
    budget_s: float
    grid: dict[str, Any] = field(default_factory=dict)  # nodes, eval nodes, test samples


def run_curves(rows, seed: int, budget_s: float, grid: dict[str, Any]) -> RunCurves:
    """From metric rows (time, node, iteration, metric, value): the node -1 series."""
    by_metric: dict[str, dict[float, float]] = {}
    for t, node, _, metric, value in rows:
        if node == -1:
            by_metric.setdefault(metric, {})[t] = value
    ref = by_metric.get("test_acc_mean") or by_metric.get("test_loss_mean") or {}
    times = np.array(sorted(ref))
    series = {m: np.array([vals.get(t, np.nan) for t in times]) for m, vals in by_metric.items()}
    return RunCurves(seed, times, series, budget_s, grid)


class GridMismatch(ValueError):
    pass


def check_grids(groups: Mapping[str, Sequence[RunCurves]]) -> list[str]:
    """What differs between runs that are combined or compared (empty: nothing)."""
    problems = []
    ref_label, ref = None, None
    for label, runs in groups.items():
        for r in runs:
            if ref is None:
                ref_label, ref = f"{label} seed {r.seed}", r
                continue
            where = f"{label} seed {r.seed} vs {ref_label}"
            if len(r.times) != len(ref.times) or not np.array_equal(r.times, ref.times):
                problems.append(
                    f"{where}: evaluated at different times ({len(r.times)} vs "
                    f"{len(ref.times)} evaluations, last {r.times[-1] if len(r.times) else None}"
                    f" vs {ref.times[-1] if len(ref.times) else None})"
                )
            for key in sorted(set(r.grid) | set(ref.grid)):
                if r.grid.get(key) != ref.grid.get(key):
                    problems.append(
                        f"{where}: {key} = {r.grid.get(key)!r} vs {ref.grid.get(key)!r}"
                    )
    return problems


ACCURACY = "test_acc_mean"


def group_stats(
    runs: Sequence[RunCurves], targets: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Mean and CI over seeds of final values, curves, time- and bytes-to-target."""
    runs = sorted(runs, key=lambda r: r.seed)
    metrics = [
        m
        for m in ("test_acc_mean", "test_loss_mean", "test_rmse_mean")
        if all(m in r.series for r in runs)
    ]
    out: dict[str, Any] = {
        "n": len(runs),
        "seeds": [r.seed for r in runs],
        "budget_s": max(r.budget_s for r in runs),
        "final": {m: mean_ci([float(r.series[m][-1]) for r in runs], confidence) for m in metrics},
    }
    same_times = all(np.array_equal(r.times, runs[0].times) for r in runs)
    curve_metrics = [*metrics, "bytes_sent_mean"]
    if same_times:
        out["curve"] = {"time_s": runs[0].times.tolist()}
        for m in curve_metrics:
            if all(m in r.series for r in runs):
                out["curve"][m] = curve_ci([r.series[m] for r in runs], confidence)
    if ACCURACY in metrics:
        for name, xkey in (("time_to_target", None), ("bytes_to_target", "bytes_sent_mean")):
            per_target = {}
            for a in targets:
                per_seed = {}
                for r in runs:
                    x = r.times if xkey is None else r.series.get(xkey)
                    per_seed[r.seed] = None if x is None else crossing(x, r.series[ACCURACY], a)
                ci = mean_ci([v for v in per_seed.values() if v is not None], confidence)
                per_target[str(a)] = {
                    **ci,
                    "reached": ci["n"],
                    "of": len(runs),
                    "per_seed": per_seed,
                }
            out[name] = per_target
    return out


def compare_groups(
    groups: Mapping[str, Sequence[RunCurves]],
    baseline: str,
    targets: Sequence[float],
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Per variant: paired ratios against ``baseline`` (by seed).

    ``speedup``: baseline time-to-target / variant's (> 1: the variant is faster);
    ``bytes_saving``: the same with bytes-to-target; ``final_acc``: variant / baseline.
    """
    stats = {label: group_stats(runs, targets, confidence) for label, runs in groups.items()}
    base = stats[baseline]
    out: dict[str, dict[str, Any]] = {}
    for label, s in stats.items():
        ratios: dict[str, Any] = {}
        if "time_to_target" in s and "time_to_target" in base:
            for name, key in (("speedup", "time_to_target"), ("bytes_saving", "bytes_to_target")):
                ratios[name] = {
                    a: paired_ratio(base[key][a]["per_seed"], s[key][a]["per_seed"], confidence)
                    for a in s[key]
                }
        if ACCURACY in s["final"] and ACCURACY in base["final"]:
            mine = {r.seed: float(r.series[ACCURACY][-1]) for r in groups[label]}
            theirs = {r.seed: float(r.series[ACCURACY][-1]) for r in groups[baseline]}
            ratios["final_acc"] = paired_ratio(mine, theirs, confidence)
        out[label] = {**s, "vs_baseline": ratios}
    return out


def fmt_ci(ci: Mapping[str, Any], fmt: str = "{:.3f}") -> str:
    """``0.812 ± 0.013`` (half-width), or just the mean for one seed, or ``-``."""
    if ci.get("mean") is None:
        return "-"
    if ci.get("lo") is None:
        return fmt.format(ci["mean"])
    return f"{fmt.format(ci['mean'])} ± {fmt.format((ci['hi'] - ci['lo']) / 2)}"


def fmt_target(entry: Mapping[str, Any], budget: float, fmt: str = "{:.1f}") -> str:
    """Time-to-target cell: ``12.3 ± 1.1 (5/5)``, or ``not reached (> 60)``."""
    if not entry["reached"]:
        return f"not reached (> {budget:g})"
    text = fmt_ci(entry, fmt)
    return f"{text} ({entry['reached']}/{entry['of']})"


def fmt_ratio(r: Mapping[str, Any]) -> str:
    if r.get("ratio") is None:
        return "-"
    if r.get("lo") is None:
        return f"{r['ratio']:.2f}x"
    return f"{r['ratio']:.2f}x [{r['lo']:.2f}, {r['hi']:.2f}]"
