"""/sys/kernel/mm/page_idle/bitmap (CONFIG_IDLE_PAGE_TRACKING).

Frame i is bit i%64 of native-endian u64 word i/64; 1 = idle.  Writing a 1
marks the frame idle and clears the accessed bits of every PTE mapping it
(rmap walk); writing 0 does nothing.  Reading checks the accessed bits again
and reports 1 only if no mapping touched the frame since.  Only frames of
user pages on an LRU list are tracked; for a THP only the head frame carries
the flag (tail frames read 0).
"""
from __future__ import annotations

import errno
import os

import numpy as np

from ..errors import AccessDenied, FeatureMissing
from .frames import SYSFS_IO_CAP, buffer_index, pread_runs, pwrite_runs, word_runs

PATH = "/sys/kernel/mm/page_idle/bitmap"

# Merging two runs of words separated by up to this many unused words costs
# a few hundred bytes more I/O and saves a syscall; reading an unused word
# is cheap unless its frames are idle-flagged by someone else (rmap walk).
MAX_GAP_WORDS = 8


def available() -> bool:
    return os.path.exists(PATH)


class PageIdleBitmap:
    def __init__(self, path: str = PATH):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FeatureMissing("page_idle bitmap", "CONFIG_IDLE_PAGE_TRACKING",
                                 "use --backend clear_refs for totals per mapping") from None
        except PermissionError:
            raise AccessDenied(path, "page idle tracking needs root") from None
        self.syscalls = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PageIdleBitmap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _plan(pfns: np.ndarray):
        """pfns: sorted unique uint64 frames -> words, runs, positions."""
        words = np.unique(pfns >> np.uint64(6))
        starts, lengths = word_runs(words, MAX_GAP_WORDS)
        return words, starts, lengths

    def set_idle(self, pfns: np.ndarray) -> None:
        """Mark the given frames idle (they need not be sorted or unique)."""
        pfns = np.unique(pfns.astype(np.uint64))
        if pfns.size == 0:
            return
        words, starts, lengths = self._plan(pfns)
        pos = buffer_index((pfns >> np.uint64(6)).astype(np.int64), starts, lengths)
        buf = np.zeros(int(lengths.sum()), dtype=np.uint64)
        # pfns are unique, so OR-ing bits into a word is the same as adding.
        np.add.at(buf, pos, np.left_shift(np.uint64(1), pfns & np.uint64(63)))
        try:
            pwrite_runs(self.fd, starts, lengths, buf, cap=SYSFS_IO_CAP)
        except OSError as e:
            if e.errno == errno.ENXIO:   # a frame past max_pfn: memory hot-removed?
                return
            raise

    def read_idle(self, pfns: np.ndarray) -> np.ndarray:
        """Idle bit (bool) of each given frame, in the order given."""
        pfns = pfns.astype(np.uint64)
        if pfns.size == 0:
            return np.zeros(0, dtype=bool)
        words, starts, lengths = self._plan(pfns)
        buf = pread_runs(self.fd, starts, lengths, cap=SYSFS_IO_CAP)
        pos = buffer_index((pfns >> np.uint64(6)).astype(np.int64), starts, lengths)
        return ((buf[pos] >> (pfns & np.uint64(63))) & np.uint64(1)).astype(bool)
