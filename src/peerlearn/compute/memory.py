"""Keep large freed buffers in the process instead of returning them to the OS.

glibc's malloc serves blocks above its mmap threshold (at most 32 MB, however it adapts) with a
fresh ``mmap`` and returns them with ``munmap`` when freed. A batched forward of GN-LeNet on 500
test images allocates activations of 65 MB per layer, so every evaluation batch maps new memory
and touches it page by page: on the shared 2-core machine, evaluating 8 models on 1,000 images
took 0.87 s of system time and 512,000 minor page faults next to 1.9 s of user time
(docs/performance.md). Raising the mmap and trim thresholds lets those blocks come from the heap
and be reused: no faults, no system time, the same numbers (allocation never changes values).

This covers the main arena, where the calling thread allocates. Blocks torch allocates in its
worker threads come from per-thread arenas, whose heaps glibc unmaps whole once they are empty,
whatever the thresholds: on two threads an evaluation call now and then faults one such block in
again (3,200 pages for a 13 MB activation, against 16,500 per call without this module).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = 1 << 30  # the heap keeps up to 1 GiB of free memory at its top

_done: bool | None = None


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where that is not glibc."""
    global _done
    if _done is not None:
        return _done
    _done = False
    # PEERLEARN_KEEP_BUFFERS=0 leaves malloc alone (benchmarks/eval_memory.py compares the two)
    if sys.platform.startswith("linux") and os.environ.get("PEERLEARN_KEEP_BUFFERS") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and others: no mallopt
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        _done = ok and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _done
