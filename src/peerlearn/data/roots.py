"""Where datasets are looked for: config first, then PEERLEARN_DATA, then the user cache.

Downloads go into the first root, so a read-only shared folder can be listed after a writable one.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PEERLEARN_DATA"


def _split(value: str) -> list[Path]:
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/peerlearn`, or `~/.cache/peerlearn` when XDG_CACHE_HOME is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "peerlearn"


def data_roots(config_root: str | Path | None = None) -> list[Path]:
    """The folders to search, in order.

    A config value wins (a string may hold several folders separated by `os.pathsep`); else the
    `PEERLEARN_DATA` list; else the user cache folder. The lists are never merged, so a config
    value fully decides where data comes from, which keeps runs reproducible.
    """
    if config_root is not None:
        roots = _split(config_root) if isinstance(config_root, str) else [Path(config_root)]
        if roots:
            return roots
    env = os.environ.get(ENV_VAR, "")
    roots = _split(env)
    if roots:
        return roots
    return [cache_root()]
