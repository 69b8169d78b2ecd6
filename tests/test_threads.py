"""compute.threads: the intra-op thread count chosen per run, and what summary.json says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from peerlearn.compute.threads import apply_threads, choose_threads, usable_cores
from peerlearn.config import ConfigError, load_config
from peerlearn.models import build_model
from peerlearn.runner import run_experiment


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_uses_one_thread_for_small_models_and_the_cores_for_big_ones(restore_threads):
    mlp = build_model("mlp", input_shape=(64,), num_classes=10, info={}, seed=1, hidden=(64,))
    conv = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    assert choose_threads("auto", mlp, torch.zeros(1, 64), 8) == 1
    ceiling = min(usable_cores(), torch.get_num_threads())
    assert choose_threads("auto", conv, torch.zeros(1, 3, 32, 32), 8) == ceiling
    assert choose_threads(3, mlp, torch.zeros(1, 64), 8) == 3  # a number is taken as is
    torch.set_num_threads(1)  # a caller (OMP_NUM_THREADS, a sweep worker) lowered it: kept
    assert choose_threads("auto", conv, torch.zeros(1, 3, 32, 32), 8) == 1
    assert apply_threads(2, mlp, torch.zeros(1, 64), 8) == 2 == torch.get_num_threads()


def test_threads_setting_is_validated():
    assert load_config(None, ["compute.threads=2"]).compute.threads == 2
    assert load_config(None, []).compute.threads == "auto"
    with pytest.raises(ConfigError):
        load_config(None, ["compute.threads=0"])
    with pytest.raises(ConfigError):
        load_config(None, ["compute.threads=many"])


def test_summary_says_which_threads_the_run_used(tmp_path: Path, restore_threads):
    cfg = load_config(None, ["stop.virtual_time_s=0.5", "eval.every_s=0.5"])
    summary = run_experiment(cfg, tmp_path / "r", quiet=True, plots=False).summary
    assert summary["compute"]["threads_setting"] == "auto"
    assert summary["compute"]["threads"] == 1  # the quickstart's 64-unit MLP
    assert summary["compute"]["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")
    # t = 0: all 16 nodes hold the same model, evaluated once
    assert summary["profile"]["eval_models"] < 16 * 2


def test_cli_sets_a_passive_openmp_wait_policy_unless_set(monkeypatch):
    from peerlearn.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(["list"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["list"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
