"""Shared fixtures: small, fast experiment configs."""

from __future__ import annotations

import pytest
import torch

from peerlearn.config import ExperimentConfig, load_config

# the tests use tiny models: one thread avoids oversubscribing small shared machines
torch.set_num_threads(1)

SMALL = [
    "name=small",
    "nodes=6",
    "data.dataset=synthetic",
    "data.partition=iid",
    "model.hidden=[16]",
    "train.local_steps=3",
    "topology.kind=ring",
    "network.preset=uniform",
    "network.mbps=10",
    "network.stragglers=0",
    "stop.virtual_time_s=3",
    "eval.every_s=1",
]


@pytest.fixture
def small_cfg() -> ExperimentConfig:
    return load_config(None, SMALL)


def small(*extra: str) -> ExperimentConfig:
    return load_config(None, [*SMALL, *extra])
