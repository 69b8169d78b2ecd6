"""``peerlearn sweep``: expansion, resume after a kill, failures, Ray = local pool, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerlearn.cli import main
from peerlearn.config import ConfigError
from peerlearn.sweep import load_sweep, parse_seeds, run_sweep

SMALL = [
    "nodes=6",
    "network.stragglers=0",
    "stop.virtual_time_s=3",
    "eval.every_s=1",
    "train.local_steps=5",
]


def _sweep_file(tmp: Path, out: Path, extra: str = "") -> Path:
    path = tmp / "sweep.toml"
    path.write_text(
        f"""
[sweep]
name = "t"
algorithms = "swift,dpsgd"
seeds = "1-3"
set = {json.dumps(SMALL)}
out = "{out}"
threads = 1
{extra}
"""
    )
    return path


def test_parse_seeds() -> None:
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("1,3,7-8") == [1, 3, 7, 8]
    assert parse_seeds([4, 2]) == [4, 2]
    assert parse_seeds(9) == [9]
    for bad in ("5-1", "a", "1,1", True, [1.5]):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_expansion_grid_zip_labels_hashes(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        """
[sweep]
algorithms = "divshare[fragments=2],swift"
seeds = [1, 2]
[sweep.grid]
"train.lr" = [0.05, 0.1]
[sweep.zip]
"train.local_steps" = [5, 10]
"compute.step_time_s" = [0.01, 0.005]
[config]
nodes = 8
"""
    )
    spec = load_sweep(path)
    assert len(spec.runs) == 2 * 2 * 2 * 2
    assert spec.baseline == "swift" and spec.swept_keys == [
        "train.lr",
        "train.local_steps",
        "compute.step_time_s",
    ]
    first = spec.runs[0]
    assert first.label == "divshare-fragments2-lr0p05-local_steps5-step_time_s0p01-s1"
    assert first.group == first.label.removesuffix("-s1")
    assert first.dirname == f"{first.label}-{first.config_hash[:8]}"
    assert "nodes = 8" in first.config_toml and "fragments = 2" in first.config_toml
    assert len({r.config_hash for r in spec.runs}) == len(spec.runs)
    # the hash depends on the config only: loading again gives the same names
    assert [r.dirname for r in load_sweep(path).runs] == [r.dirname for r in spec.runs]
    path.write_text(path.read_text().replace("[sweep.zip]", '[sweep.zip]\n"seed" = [1, 2]'))
    with pytest.raises(ConfigError, match="seeds"):
        load_sweep(path)
    path.write_text("[sweep]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_sweep(path)


def _finished(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}


def _numbers(out: Path) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    metrics = {d.name: (d / "metrics.csv").read_bytes() for d in (out / "runs").iterdir()}
    return {"stats": stats, "metrics": metrics}


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory) -> Path:
    """2 algorithms x 3 seeds on 2 local processes, killed after 2 runs finished, resumed."""
    tmp = tmp_path_factory.mktemp("pool")
    out = tmp / "out"
    path = _sweep_file(tmp, out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "peerlearn.cli", "sweep", str(path), "--jobs", "2", "--quiet"],
        start_new_session=True,  # its own process group: the kill takes the workers too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_finished(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _finished(out)
    assert 2 <= len(before) < 6, proc.stderr.read().decode()
    # a half-written run (no summary.json) and one whose summary names another config
    spec = load_sweep(path)
    pending = [r for r in spec.runs if r.dirname not in before]
    half = out / "runs" / pending[0].dirname
    half.mkdir(parents=True, exist_ok=True)
    (half / "metrics.csv").write_text("garbage")
    done = spec.runs[[r.dirname for r in spec.runs].index(next(iter(before)))]
    shutil.copytree(out / "runs" / done.dirname, out / "runs" / "stale")
    tampered = out / "runs" / pending[1].dirname
    shutil.copytree(out / "runs" / done.dirname, tampered, dirs_exist_ok=True)

    outcome = run_sweep(spec, jobs=2, quiet=True)
    assert not outcome.failed
    assert sorted(outcome.skipped) == sorted(before)  # finished runs are not redone
    assert len(outcome.ran) == 6 - len(before)
    after = _finished(out)
    assert all(after[k] == v for k, v in before.items())  # untouched
    assert (half / "summary.json").exists() and "garbage" not in (half / "metrics.csv").read_text()
    assert json.loads((tampered / "summary.json").read_text())["seed"] == pending[1].seed
    shutil.rmtree(out / "runs" / "stale")
    # running it again does nothing and gives the same numbers
    first = _numbers(out)
    again = run_sweep(load_sweep(path), jobs=1, quiet=True)
    assert again.ran == [] and len(again.skipped) == 6
    assert _numbers(out) == first
    return out


def test_pool_sweep_resumes_and_aggregates(pool_sweep: Path) -> None:
    stats = json.loads((pool_sweep / "stats.json").read_text())
    assert set(stats["groups"]) == {"swift", "dpsgd"}
    swift = stats["groups"]["swift"]
    assert swift["n"] == 3 and swift["seeds"] == [1, 2, 3]
    assert swift["final"]["test_acc_mean"]["lo"] <= swift["final"]["test_acc_mean"]["mean"]
    assert stats["groups"]["dpsgd"]["vs_baseline"]["speedup"]["0.5"]["ratio"] == 1.0
    index = json.loads((pool_sweep / "sweep.json").read_text())
    assert {r["status"] for r in index["runs"]} == {"finished"}
    lines = (pool_sweep / "sweep.csv").read_text().splitlines()
    assert lines[0] == "run,group,variant,seed,time_s,iteration,metric,value"
    assert len({line.split(",")[0] for line in lines[1:]}) == 6


def test_same_sweep_on_ray_matches_the_pool(pool_sweep: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'peerlearn[ray]')")
    out = tmp_path / "ray"
    path = _sweep_file(tmp_path, out)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        outcome = run_sweep(load_sweep(path), ray="auto", quiet=True)
    finally:
        ray.shutdown()
    assert not outcome.failed and len(outcome.ran) == 6
    assert _numbers(out) == _numbers(pool_sweep)  # bit for bit: stats and every metrics.csv


def test_failed_run_is_reported_and_sweep_goes_on(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    path = tmp_path / "s.toml"
    empty = tmp_path / "nodata"
    empty.mkdir()
    path.write_text(
        f"""
[sweep]
seeds = 1
set = {json.dumps([*SMALL, "stop.virtual_time_s=1", "data.download=false", f"data.root='{empty}'"])}
out = "{out}"
[sweep.grid]
"data.dataset" = ["fashion_mnist", "digits"]
"""
    )
    assert main(["sweep", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "dataset" in err and "fashion_mnist" in err
    index = json.loads((out / "sweep.json").read_text())
    assert sorted(r["status"] for r in index["runs"]) == ["failed", "finished"]
    failed = next(r for r in index["runs"] if r["status"] == "failed")
    assert (out / failed["dir"] / "error.txt").exists()


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    )


def _headless(browser: str, page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1280,2400",
            "--enable-logging=stderr",
            "--v=0",
            *mode,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_in_headless_chromium(pool_sweep: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(pool_sweep), "-o", str(page)]) == 0
    text = page.read_text()
    assert text.count("<svg") == 5  # acc and loss vs time and bytes, per-node spread
    assert "http://" not in text.replace("http://www.w3.org", "")  # nothing to fetch
    assert "swift" in text and "± " in text and "algorithm.name" in text
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    # every console message (errors and uncaught exceptions too) is logged as ':CONSOLE'
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFn();</script></body></html>")
    assert ":CONSOLE" in _headless(browser, bad, tmp_path, "--dump-dom").stderr
    dom = _headless(browser, page, tmp_path, "--dump-dom")
    assert dom.returncode == 0 and ":CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    assert 'data-ready="yes"' in dom.stdout and dom.stdout.count("<svg") == 5
    shot = tmp_path / "report.png"
    res = _headless(browser, page, tmp_path, f"--screenshot={shot}")
    assert res.returncode == 0 and ":CONSOLE" not in res.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_compare_seeds_is_the_same_sweep(pool_sweep: Path, tmp_path: Path, capsys) -> None:
    """compare --seeds resolves to the same run configs (hashes) as the sweep file: pointed at
    a copy of its directory it finds every run finished and gives the same statistics."""
    out = tmp_path / "cmp"
    shutil.copytree(pool_sweep, out)
    sets = [a for s in SMALL for a in ("--set", s)]
    args = ["compare", "--algorithms", "swift,dpsgd", "--seeds", "1-3", "--out", str(out)]
    assert main([*args, "--quiet", *sets]) == 0
    assert "0 to run" not in capsys.readouterr().err  # quiet: no chatter
    assert json.loads((out / "stats.json").read_text()) == json.loads(
        (pool_sweep / "stats.json").read_text()
    )
    index = json.loads((out / "sweep.json").read_text())
    assert index["baseline"] == "dpsgd" and len(index["runs"]) == 6
    assert {p.name for p in (out / "runs").iterdir()} == {
        p.name for p in (pool_sweep / "runs").iterdir()
    }


def test_evidence_copy_keeps_aggregates_and_recomputes_the_same_stats(
    pool_sweep: Path, tmp_path: Path, capsys
) -> None:
    from peerlearn.results.html_report import render_report

    src = tmp_path / "src"
    shutil.copytree(pool_sweep, src)
    index = json.loads((src / "sweep.json").read_text())
    unfinished = src / index["runs"][0]["dir"]
    (unfinished / "summary.json").unlink()  # as if still running: must be left out
    dest = tmp_path / "evidence"
    assert main(["evidence", str(src), "--out", str(dest)]) == 0
    assert "left out (not finished)" in capsys.readouterr().out
    kept = json.loads((dest / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in kept].count("not exported") == 1
    assert not (dest / index["runs"][0]["dir"]).exists()
    for r in index["runs"][1:]:
        full = (src / r["dir"] / "metrics.csv").read_text().splitlines()
        small = (dest / r["dir"] / "metrics.csv").read_text().splitlines()
        assert small[0] == full[0]
        assert small[1:] == [line for line in full[1:] if line.split(",")[1] == "-1"]
        assert len(small) < len(full)
        for name in ("config.toml", "summary.json"):
            assert (dest / r["dir"] / name).read_bytes() == (src / r["dir"] / name).read_bytes()
    # the statistics recomputed from the copy equal those recomputed from the full directory
    from peerlearn.sweep.evidence import aggregate_dir

    aggregate_dir(src)  # rewrites src/stats.json from the full rows
    assert (src / "stats.json").read_bytes() == (dest / "stats.json").read_bytes()
    assert (src / "sweep.csv").read_bytes() == (dest / "sweep.csv").read_bytes()
    group = kept[0]["group"]
    assert json.loads((dest / "stats.json").read_text())["groups"][group]["n"] == 2
    assert "<svg" in render_report([dest])
    # never overwritten unless asked, and never anything that is not an evidence copy
    assert main(["evidence", str(src), "--out", str(dest)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evidence", str(src), "--out", str(dest), "--overwrite"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["evidence", str(src), "--out", str(other), "--overwrite"]) == 2
    assert (other / "notes.txt").read_text() == "keep me"
    assert main(["evidence", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_order_seeds_starts_every_variant_of_a_seed_first(tmp_path: Path) -> None:
    from peerlearn.sweep.spec import run_order

    path = _sweep_file(tmp_path, tmp_path / "out", 'order = "seeds"')
    spec = load_sweep(path)
    assert [r.seed for r in spec.runs] == [1, 2, 3, 1, 2, 3]  # listed variant-major
    ordered = run_order(spec, spec.runs)
    assert [(r.variant, r.seed) for r in ordered] == [
        (v, s) for s in (1, 2, 3) for v in ("swift", "dpsgd")
    ]
    assert run_order(spec, spec.runs[3:]) == [spec.runs[3], spec.runs[4], spec.runs[5]]
    grid = load_sweep(_sweep_file(tmp_path, tmp_path / "out"))
    assert run_order(grid, grid.runs) == grid.runs  # the default keeps the listed order
    with pytest.raises(ConfigError, match=r"sweep\.order"):
        load_sweep(_sweep_file(tmp_path, tmp_path / "out", 'order = "random"'))
