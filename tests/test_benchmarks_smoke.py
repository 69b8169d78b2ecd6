"""CI-sized runs of every benchmark script, so that they cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

CASES = {
    "cpu_ceiling.py": ["--sizes", "64", "--threads", "1", "--steps", "1", "--repeats", "1"],
    "sim_rate.py": ["--nodes", "6", "--virtual-s", "1"],
    "train_throughput.py": [
        "--nodes",
        "2",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--single-batches",
        "4",
    ],
    "eval_throughput.py": ["--nodes", "2", "--test", "64", "--batch", "32"],
    "generic_model.py": ["--nodes", "2", "--steps", "1", "--repeats", "1", "--test", "16"],
    "results_digest.py": ["--virtual-s", "0.5"],
    "async_small.py": ["--virtual-s", "0.5"],
    "dynamics_cost.py": ["--nodes", "16", "--virtual-s", "0.5", "--repeats", "1"],
    "eval_memory.py": ["--models", "2", "--test", "64", "--batch", "32", "--rounds", "1"],
    "threads_under_load.py": ["--virtual-s", "0.5", "--rounds", "1"],
    "repro_speed.py": [
        "--mode",
        "train",
        "--steps",
        "1",
        "--chunks",
        "16",
        "--threads",
        "1",
        "--repeats",
        "1",
    ],
    "network_model.py": [
        "--nodes",
        "8",
        "--iterations",
        "1",
        "--updates",
        "0.05",
        "--engine-nodes",
        "8",
        "--engine-virtual-s",
        "0.5",
    ],
}


def test_mf_training_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "mf.json"
    args = ["--model", "matrix_factorization", "--nodes", "2", "--steps", "1", "--repeats", "1"]
    cmd = [sys.executable, str(BENCH / "train_throughput.py"), *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["model"] == "matrix_factorization"


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_writes_json(script: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH / script), *CASES[script], "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())


def test_node_receive_benchmark_runs(tmp_path: Path) -> None:
    """One real node fed by one sender process for 0.7 s, and the plain-ROUTER baseline."""
    out = tmp_path / "node_receive.json"
    cmd = [sys.executable, str(BENCH / "node_receive.py"), "--quick", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["rejected"] == 0
    assert row["node_msgs_per_s"] > 0 and row["raw_msgs_per_s"] > 0
    assert row["iterations"] > 0  # it trains and aggregates while the frames keep coming


def test_codec_benchmark_runs() -> None:
    cmd = [sys.executable, str(BENCH / "codec_time.py"), "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ms" in proc.stdout


def test_repro_speed_flows_mode_runs(tmp_path: Path) -> None:
    out = tmp_path / "flows.json"
    args = ["--mode", "flows", "--synthetic", "3", "--max-flows", "40", "--json", str(out)]
    cmd = [sys.executable, str(BENCH / "repro_speed.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["sets"] == 3


def test_repro_speed_run_mode_runs(tmp_path: Path) -> None:
    """The repro config for 0.05 virtual s, where Fashion-MNIST is on PEERLEARN_DATA."""
    from peerlearn.data import fashion_mnist
    from peerlearn.data.roots import data_roots

    if not any(p.is_dir() for p in fashion_mnist.candidates(data_roots())):
        pytest.skip("Fashion-MNIST not on PEERLEARN_DATA")
    out = tmp_path / "run.json"
    args = ["--virtual-s", "0.05", "--algorithms", "divshare", "--json", str(out)]
    cmd = [sys.executable, str(BENCH / "repro_speed.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["new"]["divshare"]["metrics_rows"] > 1


def test_every_benchmark_script_has_a_smoke_run() -> None:
    # common.py is no script: the helpers every run above imports
    covered = set(CASES) | {"node_receive.py", "codec_time.py", "gpu_variants.py", "common.py"}
    covered |= {"w1.py"}  # test_w1_benchmark_runs, where CIFAR-10 is on PEERLEARN_DATA
    covered |= {"jwins96.py"}  # tests/test_jwins96_bench.py
    covered |= {"fused_speed.py"}  # test_fused_speed_benchmark_runs, where a compiler is
    assert {p.name for p in BENCH.glob("*.py")} <= covered


def test_fused_speed_benchmark_runs(tmp_path: Path) -> None:
    from peerlearn.compute import fused

    if fused.load() is None:
        pytest.skip("no C++ compiler: no fused kernel to time")
    out = tmp_path / "fused.json"
    args = ["--jobs", "2", "--calls", "1", "--test", "32", "--repeats", "1", "--threads", "1"]
    args += ["--eval-batches", "16", "--node-chunks", "2", "--layouts", "--cpu-time"]
    cmd = [sys.executable, str(BENCH / "fused_speed.py"), *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["train fused / default"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_variants_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--nodes", "3", "--steps", "2", "--test", "64"]
    cmd = [sys.executable, str(BENCH / "gpu_variants.py"), *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["rows"]


def test_threads_crossover_runs(tmp_path: Path) -> None:
    out = tmp_path / "crossover.json"
    cmd = [
        sys.executable,
        str(BENCH / "threads_under_load.py"),
        "--crossover",
        "--rounds",
        "1",
        "--models",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["rows"]


def test_w1_benchmark_runs(tmp_path: Path) -> None:
    """Two rounds of W1 on 64 test images, where CIFAR-10 is on PEERLEARN_DATA."""
    from peerlearn.data import cifar10
    from peerlearn.data.roots import data_roots

    if not any(p.is_dir() for p in cifar10.candidates(data_roots())):
        pytest.skip("CIFAR-10 not on PEERLEARN_DATA")
    out = tmp_path / "w1.json"
    args = ["--rounds", "2", "--test-samples", "64", "--eval-probe", "--probe-batches", "32"]
    cmd = [sys.executable, str(BENCH / "w1.py"), *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["iterations_mean"] == 2
    assert result["models_evaluated"] < 3 * 16  # t = 0: one model for 16 nodes
