"""/proc/PID/pagemap: one little-endian u64 per virtual page, read into numpy.

Bits (Documentation/admin-guide/mm/pagemap.rst): 0-54 frame number (zero
without CAP_SYS_ADMIN), 55 soft-dirty, 56 exclusively mapped, 57 uffd-wp,
58 guard region (6.x), 61 file page or shared anon, 62 swapped, 63 present.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import proc_errors

PFN_MASK = np.uint64((1 << 55) - 1)
SOFT_DIRTY = np.uint64(1 << 55)
EXCLUSIVE = np.uint64(1 << 56)
FILE_SHARED = np.uint64(1 << 61)
SWAPPED = np.uint64(1 << 62)
PRESENT = np.uint64(1 << 63)

# Measured on the host kind (KERNEL.md): 4K-64K entries per read run at
# ~35-40 M entries/s; very large reads fall to ~21 M/s.
CHUNK_ENTRIES = 1 << 15


class Pagemap:
    """An open /proc/PID/pagemap.  Reads go straight into numpy buffers."""

    def __init__(self, pid: int):
        self.pid = pid
        with proc_errors(pid, "pagemap"):
            self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Pagemap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, first_page: int, npages: int, out: np.ndarray | None = None) -> np.ndarray:
        """Entries for virtual pages [first_page, first_page + npages)."""
        if out is None:
            out = np.empty(npages, dtype=np.uint64)
        view = memoryview(out).cast("B")
        done = 0
        want = npages * 8
        base = first_page * 8
        with proc_errors(self.pid, "pagemap"):
            while done < want:
                n = os.preadv(self.fd, [view[done:min(want, done + CHUNK_ENTRIES * 8)]], base + done)
                if n <= 0:
                    # The mm went away between maps and pagemap (exit), or the
                    # range is beyond the task's address space: no pages there.
                    out[done // 8:npages] = 0
                    break
                done += n
        return out


def pfn(entries: np.ndarray) -> np.ndarray:
    return entries & PFN_MASK


def present(entries: np.ndarray) -> np.ndarray:
    return (entries & PRESENT) != 0


def swapped(entries: np.ndarray) -> np.ndarray:
    return (entries & SWAPPED) != 0


def file_shared(entries: np.ndarray) -> np.ndarray:
    return (entries & FILE_SHARED) != 0


def exclusive(entries: np.ndarray) -> np.ndarray:
    return (entries & EXCLUSIVE) != 0


def soft_dirty(entries: np.ndarray) -> np.ndarray:
    return (entries & SOFT_DIRTY) != 0
