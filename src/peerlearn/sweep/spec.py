"""A sweep file (``SWEEP.toml``) and the runs it expands to.

```toml
[sweep]
name = "digits-algos"            # default: the file's stem
base = "../configs/x.toml"       # relative to this file; default: the quickstart;
                                 # "defaults": the schema's defaults
set = ["stop.virtual_time_s=20"] # --set overrides applied to the base
algorithms = "divshare,swift,adpsgd[fanout=2]"   # as `compare --algorithms`; optional
seeds = "1-5"                    # or [1, 2, 3], or 7
baseline = "adpsgd"              # ratios are taken against it (default: the last variant)
out = "sweeps/digits-algos"      # default: sweeps/<name>
jobs = 2                         # local processes (--jobs overrides)
threads = 1                      # torch threads per run (default: cores // jobs locally,
                                 # num_cpus on Ray); fix it to compare executors bit for bit

[sweep.grid]                     # every combination (cartesian product)
"train.lr" = [0.05, 0.1]

[sweep.zip]                      # lists of equal length, taken together
"train.local_steps" = [5, 10]
"compute.step_time_s" = [0.01, 0.005]

[sweep.resources]                # Ray: what each run asks for
num_cpus = 1
num_gpus = 0

[config]                         # inline base config, applied on top of `base`
nodes = 8
```

Runs are variants x grid points x zip points x seeds. Each is named by a readable label plus
the first 8 hex digits of the SHA-256 of its resolved config (without ``name``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from peerlearn.compare import parse_algorithms, variant_config
from peerlearn.config.load import (
    ConfigError,
    apply_overrides,
    dump_config,
    quickstart_toml,
    read_toml,
    set_dotted,
    validate,
)

SWEEP_KEYS = {
    "name",
    "base",
    "set",
    "algorithms",
    "seeds",
    "baseline",
    "out",
    "jobs",
    "grid",
    "zip",
    "resources",
    "allow_unequal_grids",
    "threads",
    "order",
}
# the order runs start in: "grid" as listed (variant, point, seed), or "seeds": every variant and
# point of the first seed, then of the next, so a long sweep stopped early has whole comparisons
ORDERS = ("grid", "seeds")
RESOURCE_KEYS = {"num_cpus", "num_gpus", "memory"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its resolved config and where it sits in the sweep."""

    label: str  # readable: variant, swept values, seed
    variant: str  # algorithm variant label ("base" without `algorithms`)
    seed: int
    params: dict[str, Any]  # swept key -> value (grid and zip keys)
    config_toml: str  # the resolved config, as written to config.toml
    config_hash: str  # sha256 of the resolved config without its name
    group: str  # everything but the seed: the runs whose numbers are averaged together

    @property
    def dirname(self) -> str:
        return f"{self.label}-{self.config_hash[:8]}"


@dataclass
class SweepSpec:
    name: str
    out: Path
    runs: list[RunSpec]
    variants: list[str]
    baseline: str | None
    swept_keys: list[str]
    jobs: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    allow_unequal_grids: bool = False
    threads: int | None = None
    order: str = "grid"  # see ORDERS
    source: str = ""  # the sweep file's text (copied into the sweep directory)


def parse_seeds(value: Any) -> list[int]:
    """``"1-5"`` -> [1..5]; ``"1,3,7-9"``; ``[1, 2]``; ``4`` -> [4]."""
    if isinstance(value, bool):
        raise ConfigError(f"sweep: seeds = {value!r}: expected '1-5', a list of ints or an int")
    if isinstance(value, int):
        seeds = [value]
    elif isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        seeds = list(value)
    elif isinstance(value, str):
        seeds = []
        for part in value.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise ConfigError(f"seeds {value!r}: cannot read {part!r}; expected e.g. 1-5,8")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise ConfigError(f"seeds {value!r}: range {part.strip()!r} is empty")
            seeds.extend(range(lo, hi + 1))
    else:
        raise ConfigError(f"sweep: seeds = {value!r}: expected '1-5', a list of ints or an int")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {value!r} lists a seed twice")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"seeds {value!r}: seeds must be >= 0")
    return seeds


def config_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 of a resolved config (as loaded from its TOML), its ``name`` left out."""
    body = {k: v for k, v in resolved.items() if k != "name"}
    return hashlib.sha256(tomli_w.dumps(body).encode()).hexdigest()


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": [..]}}`` and ``{"train.lr": [..]}`` both give ``{"train.lr": [..]}``."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    set_dotted(raw, key.split("."), copy.deepcopy(value), where="sweep:")


def _short(key: str, value: Any) -> str:
    text = f"{key.rsplit('.', 1)[-1]}{value}"
    return re.sub(r"[^A-Za-z0-9._]+", "", text.replace(".", "p").replace("-", "m"))


def _points(grid: dict[str, Any], zipped: dict[str, Any]) -> list[dict[str, Any]]:
    for where, table in (("grid", grid), ("zip", zipped)):
        for k, v in table.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"sweep.{where}: {k} = {v!r}: expected a non-empty list")
    if {"seed", "algorithm.name"} & (set(grid) | set(zipped)):
        raise ConfigError("sweep: sweep seeds with `seeds` and algorithms with `algorithms`")
    if set(grid) & set(zipped):
        raise ConfigError(f"sweep: keys in both grid and zip: {sorted(set(grid) & set(zipped))}")
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"sweep.zip: lists must have one length; got {lengths}")
    grid_points = [
        dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())
    ]
    n_zip = next(iter(lengths.values()), 1)
    zip_points = [{k: v[i] for k, v in zipped.items()} for i in range(n_zip)]
    return [{**g, **z} for g in grid_points for z in zip_points]


def _positive_int(sw: dict[str, Any], key: str) -> int | None:
    value = sw.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"sweep: {key} = {value!r}: expected an integer >= 1")
    return value


def load_sweep(
    path: Path | None = None,
    *,
    text: str | None = None,
    base_raw: dict[str, Any] | None = None,
) -> SweepSpec:
    """Read a sweep file (or ``text``); ``base_raw`` replaces `base` (compare --seeds)."""
    if text is None:
        assert path is not None
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read sweep file {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep file {path} is not valid TOML: {exc}") from None
    extra = set(doc) - {"sweep", "config"}
    if extra:
        raise ConfigError(f"sweep: unknown table(s) {sorted(extra)}; allowed: [sweep], [config]")
    sw = doc.get("sweep") or {}
    unknown = set(sw) - SWEEP_KEYS
    if unknown:
        raise ConfigError(
            f"sweep: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(SWEEP_KEYS))}"
        )
    here = path.parent if path is not None else Path(".")
    if base_raw is not None:
        raw = copy.deepcopy(base_raw)
    elif sw.get("base") == "defaults":
        raw = {}  # the schema's defaults, nothing else
    elif "base" in sw:
        raw = read_toml(here / sw["base"])
    else:
        raw = tomllib.loads(quickstart_toml())
    for k, v in _flatten(doc.get("config") or {}).items():
        _set(raw, k, v)
    overrides = sw.get("set", [])
    if isinstance(overrides, str):
        overrides = [overrides]
    raw = apply_overrides(raw, list(overrides))
    name = sw.get("name") or (path.stem if path is not None else raw.get("name", "sweep"))
    seeds = parse_seeds(sw["seeds"]) if "seeds" in sw else [int(raw.get("seed", 1))]
    grid = _flatten(sw.get("grid") or {})
    zipped = _flatten(sw.get("zip") or {})
    points = _points(grid, zipped)
    variants: list[tuple[str, Any, list[str]]] = [("base", None, [])]
    if "algorithms" in sw:
        variants = list(parse_algorithms(sw["algorithms"]))
    baseline = sw.get("baseline")
    labels = [v[0] for v in variants]
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"sweep: baseline {baseline!r} is not one of {labels}")
    if baseline is None and len(labels) > 1:
        baseline = labels[-1]
    resources = sw.get("resources") or {}
    if set(resources) - RESOURCE_KEYS:
        raise ConfigError(
            f"sweep.resources: unknown {sorted(set(resources) - RESOURCE_KEYS)}; "
            f"allowed: {sorted(RESOURCE_KEYS)}"
        )
    runs: list[RunSpec] = []
    for label, algo, params in variants:
        for point in points:
            for seed in seeds:
                run_raw = copy.deepcopy(raw)
                for k, v in point.items():
                    _set(run_raw, k, v)
                run_raw["seed"] = seed
                pieces = ([label] if algo is not None or len(variants) > 1 else []) + [
                    _short(k, v) for k, v in point.items()
                ]
                group = "-".join(pieces) or "base"
                run_label = f"{group}-s{seed}"
                run_raw["name"] = f"{name}-{run_label}"
                cfg = (
                    variant_config(run_raw, algo, params) if algo is not None else validate(run_raw)
                )
                text_cfg = dump_config(cfg)
                runs.append(
                    RunSpec(
                        label=run_label,
                        variant=label,
                        seed=seed,
                        params=dict(point),
                        config_toml=text_cfg,
                        config_hash=config_hash(tomllib.loads(text_cfg)),
                        group=group,
                    )
                )
    out = Path(sw.get("out") or Path("sweeps") / name)
    jobs = _positive_int(sw, "jobs")
    return SweepSpec(
        name=name,
        out=out,
        runs=runs,
        variants=labels,
        baseline=baseline,
        swept_keys=list(points[0]),
        jobs=jobs,
        resources={k: (int(v) if k == "memory" else float(v)) for k, v in resources.items()},
        allow_unequal_grids=bool(sw.get("allow_unequal_grids", False)),
        threads=_positive_int(sw, "threads"),
        order=_order(sw),
        source=text,
    )


def _order(sw: dict[str, Any]) -> str:
    order = sw.get("order", "grid")
    if order not in ORDERS:
        raise ConfigError(f"sweep.order = {order!r}; allowed: {', '.join(map(repr, ORDERS))}")
    return order


def run_order(spec: SweepSpec, runs: list[RunSpec]) -> list[RunSpec]:
    """``runs`` in the order the sweep starts them (``spec.order``)."""
    if spec.order == "grid":
        return list(runs)
    first = {}
    for r in spec.runs:
        first.setdefault(r.seed, len(first))
    return sorted(runs, key=lambda r: first[r.seed])  # stable: grid order within a seed


def compare_sweep(
    config: Path | None,
    algorithms: str,
    overrides: list[str],
    seeds: str | None,
    out: Path | None,
    baseline: str | None,
) -> SweepSpec:
    """``peerlearn compare CONFIG --algorithms ... --seeds 1-5`` as a sweep whose sweep.toml
    holds the whole resolved base config (rerunning the same command resumes it)."""
    raw = read_toml(config) if config is not None else tomllib.loads(quickstart_toml())
    raw = apply_overrides(raw, list(overrides))
    name = f"{raw.get('name', 'run')}-compare"
    sweep: dict[str, Any] = {"name": name, "base": "defaults", "algorithms": algorithms}
    sweep["seeds"] = seeds if seeds else str(raw.get("seed", 1))
    if baseline:
        sweep["baseline"] = baseline
    sweep["out"] = str(out if out is not None else Path("runs") / name)
    text = tomli_w.dumps({"sweep": sweep, "config": raw})
    return load_sweep(None, text=text)
