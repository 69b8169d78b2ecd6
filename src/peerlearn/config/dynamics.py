"""Config sections of a changing network: capacity traces (``[dynamics]``) and churn (``[churn]``).

Both are off by default, and a run with both off is exactly the static run (docs/dynamics.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from peerlearn.config.sections import Section

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]

TraceFormat = Literal["auto", "csv", "json", "fedscale"]


class DynamicsConfig(Section):
    """Per-node capacities and compute speed that change over virtual time (piecewise constant).

    ``kind = "trace"`` reads ``trace`` (CSV, JSON or a FedScale device-capacity file);
    ``rotating_stragglers`` slows a fresh random set of ``stragglers`` nodes every ``period_s``;
    ``diurnal`` scales every node's capacity by a day-long sine sampled every ``step_s``.
    """

    kind: Literal["none", "trace", "rotating_stragglers", "diurnal"] = "none"
    trace: str | None = None
    format: TraceFormat = "auto"
    # rotating_stragglers: the slowed set is redrawn every period_s (seeded by the run seed)
    period_s: PosFloat = 30.0
    stragglers: Annotated[int, Field(ge=0)] = 1
    # capacity of a slowed node = its preset capacity / slowdown
    slowdown: Annotated[float, Field(ge=1)] = 5.0
    # rotating_stragglers: also multiply a slowed node's compute factor by slowdown
    slow_compute: bool = False
    # diurnal: capacity swings between (1 - amplitude) and 1 times the preset's, period_s a day
    amplitude: Annotated[float, Field(ge=0, lt=1)] = 0.5
    # diurnal: the sine is held constant over steps of step_s (None: period_s / 24)
    step_s: PosFloat | None = None
    # fedscale: the FedScale client ids that become nodes 0..n-1 (None: the first n, sorted)
    clients: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> DynamicsConfig:
        if self.kind == "trace" and not self.trace:
            raise ValueError("dynamics kind 'trace' needs dynamics.trace (a trace file)")
        if self.trace and self.kind != "trace":
            raise ValueError(f"dynamics.trace is only read by kind 'trace', not {self.kind!r}")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


class ChurnConfig(Section):
    """Nodes that leave and rejoin: from a trace, or exponential on/off times.

    ``exponential``: each node alternates online and offline periods drawn from exponential
    distributions with means ``mean_offline_s`` and ``mean_offline_s * (1 - f) / f`` for
    ``offline_fraction = f``, so a fraction ``f`` of the nodes is offline on average.
    """

    kind: Literal["none", "trace", "exponential"] = "none"
    trace: str | None = None
    format: TraceFormat = "auto"
    offline_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    mean_offline_s: PosFloat = 10.0
    # exponential: whether nodes may already be offline at time 0 (drawn with probability f)
    start_offline: bool = True
    # synchronous algorithms: a round ends this long after the node sent its payload, with
    # whatever neighbours' payloads arrived (None: wait for every neighbour)
    round_timeout_s: PosFloat | None = None
    # fedscale: the FedScale client ids that become nodes 0..n-1 (None: the first n, sorted)
    clients: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChurnConfig:
        if self.kind == "trace" and not self.trace:
            raise ValueError("churn kind 'trace' needs churn.trace (an availability trace file)")
        if self.trace and self.kind != "trace":
            raise ValueError(f"churn.trace is only read by kind 'trace', not {self.kind!r}")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


def check_dynamics(cfg, synchronous: tuple[str, ...]) -> None:
    """Cross-checks of ``[dynamics]`` and ``[churn]`` against the rest of the config."""
    n = cfg.nodes
    for section in (cfg.dynamics, cfg.churn):
        if section.clients is not None and len(section.clients) != n:
            raise ValueError(
                f"clients lists {len(section.clients)} FedScale ids; need one per node ({n})"
            )
    if cfg.dynamics.kind == "rotating_stragglers" and cfg.dynamics.stragglers > n:
        raise ValueError(f"dynamics.stragglers = {cfg.dynamics.stragglers} > nodes ({n})")
    if (cfg.dynamics.enabled or cfg.churn.enabled) and cfg.stop.virtual_time_s is None:
        # generated changes never end: a node offline for good would keep the run going
        raise ValueError("[dynamics] and [churn] need stop.virtual_time_s (a time limit)")
    if cfg.dynamics.enabled and cfg.engine == "deploy":
        raise ValueError(
            "[dynamics] capacity traces are simulator-only (engine 'sim'); deployment honours "
            "[churn] but not changing capacities"
        )
    if (
        cfg.churn.enabled
        and cfg.algorithm.name in synchronous
        and cfg.churn.round_timeout_s is None
    ):
        raise ValueError(
            f"churn with the synchronous algorithm {cfg.algorithm.name!r} needs "
            "churn.round_timeout_s: a round would wait for ever for a payload lost to churn"
        )
