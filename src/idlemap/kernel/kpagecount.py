"""/proc/kpagecount: one u64 per frame, how many times it is mapped (root only).

The count is the frame's mapcount: a page mapped by three processes (or
twice by one) reads 3 (or 2).  For a PMD-mapped THP the head frame's count is
the number of PMD mappings.  PSS divides each page by this number.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import AccessDenied
from .frames import buffer_index, pread_runs, word_runs

PATH = "/proc/kpagecount"


def read_counts(pfns: np.ndarray) -> np.ndarray:
    """Mapcount of each frame given (any order), as int64."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    if pfns.size == 0:
        return np.zeros(0, np.int64)
    uniq, inverse = np.unique(pfns, return_inverse=True)
    u = uniq.astype(np.int64)
    starts, lengths = word_runs(u, 64)
    try:
        fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise AccessDenied(PATH, "reading page map counts needs root") from None
    try:
        buf = pread_runs(fd, starts, lengths)
    finally:
        os.close(fd)
    return buf[buffer_index(u, starts, lengths)][inverse].astype(np.int64)
