"""Load a config from TOML, apply ``--set key=value`` overrides, validate, and report errors.

Errors become one line that names the key, the offending value and what is allowed, so the CLI can
print it and exit with status 2 instead of dumping a traceback.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from peerlearn.components import ALGORITHMS, MODELS, PRESETS, TOPOLOGIES
from peerlearn.config.schema import ExperimentConfig, ModelConfig, NetworkConfig, TopologyConfig
from peerlearn.plugins import PluginError, load_entry_points, load_modules


class ConfigError(Exception):
    """A config problem, already phrased for the user (one line)."""


def quickstart_toml() -> str:
    """The built-in quickstart experiment (digits, 16 nodes, a few stragglers)."""
    return resources.files("peerlearn.config").joinpath("quickstart.toml").read_text()


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
            f"at offset {exc.start}); TOML files must be UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=1`` -> (["a", "b"], 1); values are TOML literals, bare words are strings."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {item!r}: expected key=value with a dotted key, e.g. train.lr=0.1"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as ring or divshare
    return key.split("."), value


def set_dotted(raw: dict[str, Any], path: list[str], value: Any, *, where: str) -> None:
    """``raw[a][b]... = value`` for ``path = [a, b, ...]``, creating sections on the way;
    ``where`` names the source in the error (``--set``, ``sweep``)."""
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where} {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        set_dotted(raw, path, value, where="--set")
    return raw


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_error(exc, raw)) from None


def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    *,
    notify: Callable[[str], None] | None = None,
) -> ExperimentConfig:
    """The validated config of ``path`` (or the quickstart when None) with overrides applied.

    ``--set algorithm.name=X`` switches algorithm: the file's algorithm keys that X does not take
    are dropped (``notify`` gets a one-line notice naming them; default: stderr).
    """
    raw = read_toml(Path(path)) if path is not None else tomllib.loads(quickstart_toml())
    overrides = overrides or []
    raw = _switch_algorithm(raw, overrides, notify or _notice)
    return validate(apply_overrides(raw, overrides))


def _notice(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def algorithm_fields(name: str) -> set[str] | None:
    """The keys algorithm ``name`` takes (None: no such algorithm)."""
    if name not in ALGORITHMS:
        return None
    return set(ALGORITHMS.get(name).config.model_fields)


def carry_algorithm(section: dict[str, Any], name: str) -> tuple[dict[str, Any], list[str]]:
    """An ``[algorithm]`` section moved to algorithm ``name``: the keys ``name`` takes (``fanout``
    carries over from DivShare to Swift, ``fragments`` does not), and the dropped keys."""
    fields = algorithm_fields(name)
    if fields is None:  # unknown: validation reports it with the allowed names
        return {"name": name}, []
    kept = {k: v for k, v in section.items() if k in fields and k != "name"}
    dropped = sorted(k for k in section if k not in fields)
    return {**kept, "name": name}, dropped


def _switch_algorithm(
    raw: dict[str, Any], overrides: list[str], notify: Callable[[str], None]
) -> dict[str, Any]:
    names = [v for p, v in map(parse_override, overrides) if p == ["algorithm", "name"]]
    section = raw.get("algorithm")
    if names and isinstance(names[-1], str) and names[-1] not in ALGORITHMS:
        _load_plugins_of(raw, overrides)  # the new name may be a plugin's
    if not names or not isinstance(section, dict) or not isinstance(names[-1], str):
        return raw
    if section.get("name", "dpsgd") == names[-1]:
        return raw
    moved, dropped = carry_algorithm(section, names[-1])
    if dropped and algorithm_fields(names[-1]) is not None:
        notify(
            f"algorithm {names[-1]!r} does not take {', '.join(dropped)} "
            f"(set for {section.get('name', 'dpsgd')!r} in the config); dropped"
        )
    return {**raw, "algorithm": moved}


def _load_plugins_of(raw: dict[str, Any], overrides: list[str]) -> None:
    """Register the config's plugins now (validation would later), so that the keys of a
    plugin's algorithm are known when ``--set algorithm.name`` switches to it."""
    try:
        load_entry_points()
    except PluginError as exc:
        raise ConfigError(f"config: {exc}") from None
    names = raw.get("plugins")
    for path, value in map(parse_override, overrides):
        if path == ["plugins"]:
            names = value
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        try:
            load_modules(names)
        except PluginError as exc:
            raise ConfigError(f"config: {exc}") from None


#: keys added after configs were first written, left out of a dump while they hold their
#: default: the resolved config of a run that does not use them stays the same text, so a sweep's
#: finished runs (matched by the hash of that text) and checkpoints (its digest) made before the
#: keys existed are still recognised. Loading fills the defaults back in.
OMITTED_AT_DEFAULT = (
    "compute.fused",
    "compute.spill_after_mb",
    "network.send_buffer",
    "deploy.tcp_congestion",
    "deploy.segmentation_offload",
    "topology.dynamic",
    "dynamics",
    "churn",
)


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML (unset optional values are left out: TOML has no null, and
    so are the ``OMITTED_AT_DEFAULT`` keys while they hold their default)."""
    data = _drop_none(cfg.model_dump(mode="json"))
    defaults = _drop_none(type(cfg)().model_dump(mode="json"))
    for key in OMITTED_AT_DEFAULT:
        *parents, leaf = key.split(".")
        here, there = data, defaults
        for part in parents:
            here, there = here.get(part, {}), there.get(part, {})
        if leaf in here and here[leaf] == there.get(leaf):
            del here[leaf]
    return tomli_w.dumps(data)


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


# ---------------------------------------------------------------------------------------------
# Error formatting


def format_error(exc: ValidationError, raw: dict[str, Any]) -> str:
    """One line for the first error: ``config: key = value: what is wrong/allowed``."""
    err = exc.errors()[0]
    loc = _clean_loc(err["loc"])
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], raw)
        where = f"section [{'.'.join(map(str, loc[:-1]))}]" if len(loc) > 1 else "top level"
        return (
            f"config: unknown key {key!r} ({where}); allowed: {', '.join(allowed)}"
            if allowed
            else f"config: unknown key {key!r}"
        )
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        msg = f"not allowed; allowed: {err['ctx']['expected']}"
    if not loc:
        return f"config: {msg}"
    if kind == "value_error" and isinstance(err.get("input"), dict):  # a section's own check
        return f"config: [{key}] {msg}"
    return f"config: {key} = {_show(err.get('input'))}: {msg}"


def _clean_loc(loc: tuple) -> tuple:
    # a wrap validator's function name can appear in the path: keep only keys and indices
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def algorithm_models() -> list[type[BaseModel]]:
    """Every registered algorithm's config class."""
    return [e.config for e in ALGORITHMS.entries()]


#: sections validated by the class their named entry brings: (registry, name key, base class)
_NAMED_SECTIONS = {
    "algorithm": (ALGORITHMS, "name", None),
    "model": (MODELS, "name", ModelConfig),
    "topology": (TOPOLOGIES, "kind", TopologyConfig),
    "network": (PRESETS, "preset", NetworkConfig),
}


def _allowed_keys(section: tuple, raw: dict[str, Any]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for depth, part in enumerate(section):
        if depth == 0 and part in _NAMED_SECTIONS:
            registry, key, base = _NAMED_SECTIONS[str(part)]
            given = raw.get(str(part))
            given = given if isinstance(given, dict) else {}
            default = base.model_fields[key].default if base else "dpsgd"
            name = given.get(key, default)
            if name not in registry:
                return []
            model = getattr(registry.get(name), "config", None) or base
            continue
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
