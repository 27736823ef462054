"""Bound glibc's malloc arenas and return large buffers, so the daemon's RSS follows its live
data.

glibc gives each thread that allocates its own arena (up to 8 per core) and keeps freed memory
in it. The daemon moves work between anyio's worker threads (reads, exports, replays), so every
thread ends up holding its own high-water mark: measured, an export of 94 MiB grew the daemon by
19 to 26 MiB with the default and by 10 MiB with two arenas, at no cost to throughput (the writer
and the readers spend their time in SQLite and the kernel, not in malloc contention).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("timelined.daemon")

M_ARENA_MAX = -8  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
DEFAULT_ARENAS = 2
# Buffers from this size up get pages of their own, returned to the kernel when freed.
MMAP_THRESHOLD = 256 * 1024


def _mallopt(option: int, value: int) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no arenas to limit)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(option, value))


def return_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold, unless the operator set MALLOC_MMAP_THRESHOLD_.

    glibc raises the threshold by itself (up to 32 MiB) each time a large mmapped block is freed,
    so after one big frame every later buffer of up to that size comes from the heap, where a
    freed one stays resident: measured, five refused 20 MB frames left the daemon 96 MiB larger
    for good (issue 18). A fixed threshold turns that off: a frame, a reply or a watcher's
    catch-up page of 256 KiB or more is its own mapping, given back to the kernel when freed.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap malloc arenas unless the operator set MALLOC_ARENA_MAX; False where not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False  # the operator's choice, read by glibc itself at start
    done = _mallopt(M_ARENA_MAX, arenas)
    if done:
        log.debug("malloc arenas limited to %d", arenas)
    return done
