"""Generated blocks in Markdown documents: the text between two marker lines, rewritten or
checked by a script that recomputes it from committed data (docs/repro/make_tables.py)."""

from __future__ import annotations

import sys
from pathlib import Path


def rewrite_block(doc: Path, begin: str, end: str, block: str, script: str, check: bool) -> int:
    """Replace ``doc``'s text from ``begin`` to ``end`` (``block`` includes both markers), or with
    ``check`` only compare. Exit status: 0 done or up to date, 1 out of date, 2 no markers."""
    text = doc.read_text()
    if begin not in text or end not in text:
        print(f"{doc}: the markers {begin!r} and {end!r} are missing", file=sys.stderr)
        return 2
    head, rest = text.split(begin, 1)
    new = head + block + rest.split(end, 1)[1]
    if check:
        if new != text:
            print(f"{doc} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    doc.write_text(new)
    return 0
