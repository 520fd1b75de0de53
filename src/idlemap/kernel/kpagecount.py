"""/proc/kpagecount: one u64 per frame, how many times it is mapped (root only).

The count is the frame's mapcount: a page mapped by three processes (or
twice by one) reads 3 (or 2).  For a PMD-mapped THP the head frame's count is
the number of PMD mappings.  PSS divides each page by this number.
"""
from __future__ import annotations

import numpy as np

from ..errors import AccessDenied
from .frames import read_per_frame

PATH = "/proc/kpagecount"


def read_counts(pfns: np.ndarray) -> np.ndarray:
    """Mapcount of each frame given (any order), as int64."""
    try:
        return read_per_frame(PATH, pfns)
    except PermissionError:
        raise AccessDenied(PATH, "reading page map counts needs root") from None
