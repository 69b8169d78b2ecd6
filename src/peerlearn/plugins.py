"""Components from outside the package: entry points and the config's ``plugins`` modules.

A plugin is a Python module that registers components when imported (``peerlearn.api``). It is
found in one of two ways:

- an installed distribution declares it in the entry point group ``peerlearn.plugins``
  (``[project.entry-points."peerlearn.plugins"] mylab = "mylab.peerlearn_plugin"``); every such
  module is imported before the first config is validated. A value ``module:function`` is
  imported and the function called with no arguments.
- a config names it: ``plugins = ["mylab.el"]`` (top level), imported before that config is
  validated; the module must be importable (installed, or on ``PYTHONPATH``).

``peerlearn list`` shows each entry with where it came from.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from peerlearn.registry import registering_from

ENTRY_POINT_GROUP = "peerlearn.plugins"

_entry_points_loaded = False
_modules_loaded: set[str] = set()


class PluginError(ValueError):
    """A plugin that cannot be loaded (one line, naming it)."""


def load_entry_points(*, force: bool = False) -> list[str]:
    """Import every installed ``peerlearn.plugins`` entry point once; their labels."""
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return []
    _entry_points_loaded = True
    loaded = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        label = _label(ep)
        with registering_from(label):
            try:
                obj = ep.load()
                if callable(obj):
                    obj()
            except Exception as exc:
                raise PluginError(
                    f"plugin {label}: cannot load {ep.value!r}: {type(exc).__name__}: {exc}"
                ) from None
        loaded.append(label)
    return loaded


def load_modules(names: list[str]) -> None:
    """Import the config's ``plugins`` modules (each once per process)."""
    for name in names:
        if name in _modules_loaded:
            continue
        if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
            raise PluginError(f"plugins: {name!r} is not a module name such as 'mylab.el'")
        with registering_from(f"config module {name}"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                raise PluginError(
                    f"plugins: cannot import module {name!r} ({exc}); install it or put its "
                    "folder on PYTHONPATH"
                ) from None
            except Exception as exc:
                raise PluginError(
                    f"plugins: importing module {name!r} failed: {type(exc).__name__}: {exc}"
                ) from None
        _modules_loaded.add(name)


def _label(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return f"entry point {ep.name} ({dist.metadata['Name']} {dist.version})"
    return f"entry point {ep.name}"
