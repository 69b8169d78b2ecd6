"""A registry of named components of one kind, and where each entry came from.

Every kind of component (algorithms, models, datasets, partitioners, topologies, network presets,
wire payloads, message kinds) has one ``Registry`` in ``peerlearn.components``. An entry holds
everything about its item in one place; the config schema, the engines and ``peerlearn list`` only
ever look names up here. This module imports nothing heavy: the config loads it.

Built-in entries are registered by the modules named in ``builtins``, imported on the first
lookup. Entries may name what they need lazily as ``"module:attribute"`` strings (``resolve``),
so that validating a config does not import torch.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Generic, TypeVar

#: ``Entry.source`` of what the package itself registers
BUILTIN = "built-in"
_SOURCE: ContextVar[str | None] = ContextVar("peerlearn_registry_source", default=None)
#: modules whose frames are skipped when looking for who registers an entry
_MACHINERY = ("peerlearn.registry", "peerlearn.components", "peerlearn.api", "peerlearn.plugins")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class RegistryError(ValueError):
    """An unknown name, or a registration that cannot be accepted (one line)."""


@contextmanager
def registering_from(source: str) -> Iterator[None]:
    """Entries registered inside this block are labelled ``source`` (``peerlearn list``)."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def current_source() -> str:
    """Where an entry registered now comes from: the enclosing ``registering_from``, else the
    registering module (``built-in`` for peerlearn's own)."""
    source = _SOURCE.get()
    if source is not None:
        return source
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module not in _MACHINERY and not module.startswith("dataclasses"):
            break
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    if module == "peerlearn" or module.startswith("peerlearn."):
        return BUILTIN
    return f"module {module}"


def resolve(ref: Any) -> Any:
    """``"package.module:attr"`` -> that attribute (imported now); anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep:
        raise RegistryError(f"{ref!r} is not a 'module:attribute' reference")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def quoted_names(names: list[str]) -> str:
    """``'a', 'b' or 'c'``: how the config's errors list allowed names."""
    quoted = [repr(n) for n in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """What every entry has: its name, a one-line description and where it came from."""

    name: str
    description: str = ""
    source: str = field(default_factory=current_source)


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Named entries of one kind, in registration order.

    ``kind`` names the kind in messages ("algorithm"); ``builtins`` are the modules whose import
    registers the built-in entries (imported once, on the first lookup).
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtins = builtins
        self._loaded = not builtins
        self._entries: dict[str, E] = {}
        #: bumped on every change, so derived tables (wire ids) know when to rebuild
        self.version = 0
        self._listeners: list[Callable[[E], None]] = []

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before importing: those modules call add(), which must not recurse
        with registering_from(BUILTIN):
            for module in self._builtins:
                import_module(module)

    def add(self, entry: E) -> E:
        """Register ``entry``; a name taken by another entry is an error (names are global)."""
        if entry.source != BUILTIN:
            self._load()  # built-ins first, so that a plugin cannot take a built-in's name
        name = entry.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise RegistryError(
                f"{self.kind} name {name!r}: use letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        old = self._entries.get(name)
        # the same source may register a name again (a module imported twice, or reloaded)
        if old is not None and old.source != entry.source:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered ({old.source}); "
                f"{entry.source} cannot register it again: pick another name"
            )
        self._entries[name] = entry
        self.version += 1
        for listener in self._listeners:
            listener(entry)
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and interactive sessions that re-register)."""
        self._load()
        if self._entries.pop(name, None) is not None:
            self.version += 1

    def on_add(self, listener: Callable[[E], None]) -> None:
        """Call ``listener(entry)`` for every later registration (checks across registries)."""
        self._listeners.append(listener)

    def get(self, name: str) -> E:
        """The entry ``name``; ``RegistryError`` listing the allowed names if there is none."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(
                f"unknown {self.kind} {name!r}; allowed: {self.allowed()}"
            ) from None

    def allowed(self) -> str:
        return quoted_names(self.names())

    def names(self) -> list[str]:
        """Built-ins first, then the rest, each by name: the same order however the modules
        that register them happened to be imported."""
        return [e.name for e in self.entries()]

    def entries(self) -> list[E]:
        self._load()
        return sorted(self._entries.values(), key=lambda e: (e.source != BUILTIN, e.name))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
