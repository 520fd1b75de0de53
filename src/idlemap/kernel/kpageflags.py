"""/proc/kpageflags: one u64 of flags per frame (root only)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import AccessDenied
from .frames import pread_runs, word_runs

PATH = "/proc/kpageflags"

REFERENCED = 1 << 2
LRU = 1 << 5
ACTIVE = 1 << 6
MMAP = 1 << 11
ANON = 1 << 12
COMPOUND_HEAD = 1 << 15
COMPOUND_TAIL = 1 << 16
HUGE = 1 << 17
THP = 1 << 22
IDLE = 1 << 25


def read_flags(pfns: np.ndarray) -> np.ndarray:
    """Flags of each frame given (any order)."""
    pfns = pfns.astype(np.uint64)
    if pfns.size == 0:
        return np.zeros(0, np.uint64)
    uniq, inverse = np.unique(pfns, return_inverse=True)
    starts, lengths = word_runs(uniq.astype(np.int64), 64)
    try:
        fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise AccessDenied(PATH, "reading page flags needs root") from None
    try:
        buf = pread_runs(fd, starts, lengths)
    finally:
        os.close(fd)
    from .frames import buffer_index
    pos = buffer_index(uniq.astype(np.int64), starts, lengths)
    return buf[pos][inverse]
