"""results/stats.py against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peerlearn.results.stats import (
    RunCurves,
    check_grids,
    compare_groups,
    crossing,
    curve_ci,
    fmt_target,
    group_stats,
    mean_ci,
    paired_ratio,
)

T975_2 = 4.302652729749464  # Student t, 97.5%, 2 degrees of freedom (tables)
T975_1 = 12.706204736174707


def test_mean_ci_by_hand() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["n"] == 3 and ci["mean"] == 2.0 and ci["sd"] == 1.0
    half = T975_2 * 1.0 / math.sqrt(3)
    assert ci["lo"] == pytest.approx(2.0 - half, abs=1e-9)
    assert ci["hi"] == pytest.approx(2.0 + half, abs=1e-9)
    assert mean_ci([5.0]) == {"n": 1, "mean": 5.0, "lo": None, "hi": None, "sd": None}
    assert mean_ci([])["mean"] is None
    assert mean_ci([4.0, None, 4.0])["n"] == 2  # None (not reached) is left out


def test_crossing_interpolates_between_bracketing_evaluations() -> None:
    x, y = [0.0, 10.0, 20.0], [0.2, 0.4, 0.8]
    assert crossing(x, y, 0.6) == pytest.approx(15.0)  # 10 + (0.6-0.4)/(0.8-0.4) * 10
    assert crossing(x, y, 0.4) == pytest.approx(10.0)  # exactly at an evaluation
    assert crossing(x, y, 0.1) == 0.0  # reached at the first evaluation
    assert crossing(x, y, 0.9) is None
    # the first crossing counts even if the curve dips afterwards
    assert crossing([0, 1, 2, 3], [0.0, 1.0, 0.0, 1.0], 0.5) == pytest.approx(0.5)


def test_curve_ci_pointwise() -> None:
    c = curve_ci([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    assert c["mean"] == [0.0, 2.0]
    assert c["lo"][0] == 0.0 and c["hi"][0] == 0.0
    assert c["hi"][1] == pytest.approx(2.0 + T975_2 / math.sqrt(3))


def test_paired_ratio_by_hand() -> None:
    r = paired_ratio({1: 2.0, 2: 8.0, 3: None}, {1: 1.0, 2: 2.0, 3: 5.0, 4: 1.0})
    # pairs: seed 1 (ratio 2) and seed 2 (ratio 4); seed 3 unreached, seed 4 unpaired
    assert r["pairs"] == 2
    assert r["ratio"] == pytest.approx(2**1.5)  # geometric mean of 2 and 4
    sd = math.log(2) / math.sqrt(2)  # sample sd of (ln 2, 2 ln 2)
    half = T975_1 * sd / math.sqrt(2)
    assert r["lo"] == pytest.approx(math.exp(1.5 * math.log(2) - half))
    assert r["hi"] == pytest.approx(math.exp(1.5 * math.log(2) + half))


def _run(seed: int, acc: list[float], sent: list[float] | None = None, times=None) -> RunCurves:
    t = np.array(times or [0.0, 10.0, 20.0])
    series = {
        "test_acc_mean": np.array(acc),
        "test_loss_mean": 1.0 - np.array(acc),
        "bytes_sent_mean": np.array(sent or [0.0, 100.0, 200.0]),
    }
    return RunCurves(seed, t, series, 20.0, {"nodes": 6})


def test_group_stats_time_and_bytes_to_target_with_a_censored_seed() -> None:
    runs = [_run(1, [0.2, 0.6, 0.8]), _run(2, [0.2, 0.4, 0.8]), _run(3, [0.1, 0.2, 0.3])]
    s = group_stats(runs, [0.5])
    tt = s["time_to_target"]["0.5"]
    # seed 1: 0 + (0.5-0.2)/(0.6-0.2)*10 = 7.5; seed 2: 10 + (0.1/0.4)*10 = 12.5; seed 3: never
    assert tt["per_seed"] == {1: pytest.approx(7.5), 2: pytest.approx(12.5), 3: None}
    assert tt["reached"] == 2 and tt["of"] == 3 and tt["mean"] == pytest.approx(10.0)
    assert s["bytes_to_target"]["0.5"]["mean"] == pytest.approx(100.0)  # 75 and 125 bytes
    assert fmt_target(tt, 20.0).endswith("(2/3)")
    never = group_stats([runs[2]], [0.5])["time_to_target"]["0.5"]
    assert fmt_target(never, 20.0) == "not reached (> 20)"
    assert s["final"]["test_acc_mean"]["mean"] == pytest.approx((0.8 + 0.8 + 0.3) / 3)
    assert s["curve"]["time_s"] == [0.0, 10.0, 20.0]
    assert s["curve"]["test_acc_mean"]["mean"][1] == pytest.approx(0.4)


def test_compare_groups_pairs_by_seed() -> None:
    base = [_run(1, [0.0, 0.5, 1.0]), _run(2, [0.0, 0.25, 0.5])]  # t->0.5: 10, 20
    fast = [_run(1, [0.0, 1.0, 1.0]), _run(2, [0.0, 0.5, 1.0])]  # t->0.5: 5, 10
    out = compare_groups({"fast": fast, "base": base}, "base", [0.5])
    sp = out["fast"]["vs_baseline"]["speedup"]["0.5"]
    assert sp["pairs"] == 2 and sp["ratio"] == pytest.approx(2.0)
    assert sp["lo"] == pytest.approx(2.0) and sp["hi"] == pytest.approx(2.0)  # no spread
    assert out["base"]["vs_baseline"]["speedup"]["0.5"]["ratio"] == pytest.approx(1.0)
    assert out["fast"]["vs_baseline"]["final_acc"]["ratio"] == pytest.approx(math.sqrt(2.0))


def test_check_grids_names_differences() -> None:
    a = _run(1, [0.1, 0.2, 0.3])
    assert check_grids({"a": [a], "b": [_run(1, [0.1, 0.2, 0.3])]}) == []
    other_times = _run(1, [0.1, 0.2, 0.3], times=[0.0, 5.0, 20.0])
    assert "different times" in check_grids({"a": [a], "b": [other_times]})[0]
    other_nodes = _run(1, [0.1, 0.2, 0.3])
    other_nodes.grid = {"nodes": 8}
    assert "nodes = 8 vs 6" in check_grids({"a": [a], "b": [other_nodes]})[0]
