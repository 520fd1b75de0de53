"""/proc/kpageflags: one u64 of flags per frame (root only)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import AccessDenied
from .frames import buffer_index, pieces, pread_joined, pread_runs, word_runs

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


def open_flags() -> int:
    """An fd on /proc/kpageflags, for callers that read it every round."""
    try:
        return os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise AccessDenied(PATH, "reading page flags needs root") from None


def read_flags(pfns: np.ndarray, fd: int | None = None) -> np.ndarray:
    """Flags of each frame given (any order).  ``fd``: an open_flags() fd
    to use (and leave open) instead of opening the file for this call."""
    pfns = pfns.astype(np.uint64)
    if pfns.size == 0:
        return np.zeros(0, np.uint64)
    p = pfns.view(np.int64)
    if p.size == 1 or int(np.diff(np.sort(p)).min()) > 65:
        # Too far apart for any two to share a read (THP heads are 512
        # apart, in whatever order the VA layout gives them): one 8-byte
        # read each, in the order given, the same syscalls as below without
        # the unique, run and index bookkeeping (~2x under TCG).
        own = fd is None
        if own:
            fd = open_flags()
        try:
            data = pread_joined(fd, (p * 8).tolist(), [8] * p.size)
            if data is not None:
                return np.frombuffer(data, np.uint64).copy()
        finally:
            if own:
                os.close(fd)
    uniq, inverse = np.unique(pfns, return_inverse=True)
    starts, lengths = word_runs(uniq.astype(np.int64), 64)
    own = fd is None
    if own:
        fd = open_flags()
    try:
        file_offs, _, sizes = pieces(starts, lengths, np.zeros(lengths.size, np.int64))
        data = pread_joined(fd, file_offs, sizes)
        if data is not None:
            buf = np.frombuffer(data, np.uint64)
        else:
            buf = pread_runs(fd, starts, lengths)
    finally:
        if own:
            os.close(fd)
    pos = buffer_index(uniq.astype(np.int64), starts, lengths)
    return buf[pos][inverse]
