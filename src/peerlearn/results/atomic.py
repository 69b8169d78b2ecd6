"""Files that appear whole or not at all: written to a hidden temporary name, then renamed.

A reader (a resumed run, the merge, a sweep deciding what is finished, a node waiting for the
start time) never sees half a file. ``durable`` also fsyncs the file and its folder, for files
that must survive a power loss, not only a killed process (checkpoints).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Content = str | bytes | Callable[[BinaryIO], object]


def write_atomic(path: Path, content: Content, *, durable: bool = False) -> None:
    """Write ``content`` (text, bytes, or a function writing to a binary file) to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            if isinstance(content, str):
                f.write(content.encode())
            elif isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
