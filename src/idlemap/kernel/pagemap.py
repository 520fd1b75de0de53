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

# Measured on the host kind: 4K-64K entries per read run at
# ~35-40 M entries/s; very large reads fall to ~21 M/s.  The kernel fills
# its own 4 KiB buffer per 2 MiB of VA and copies it out, so the read size
# only sets the syscall count and how much of our destination is written
# per call: 256 KiB stays in L2.
CHUNK_ENTRIES = 1 << 15


class Pagemap:
    """An open /proc/PID/pagemap.  Reads go straight into numpy buffers."""

    def __init__(self, pid: int):
        self.pid = pid
        self._runs_key: tuple[list, list] | None = None
        self._runs: list = []
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
        with proc_errors(self.pid, "pagemap"):
            self._read(first_page, npages, out)
        return out

    def _read(self, first_page: int, npages: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        done = 0
        want = npages * 8
        base = first_page * 8
        step = CHUNK_ENTRIES * 8
        while done < want:
            n = os.preadv(self.fd, [view[done:min(want, done + step)]], base + done)
            if n <= 0:
                # The mm went away between maps and pagemap (exit), or the
                # range is beyond the task's address space: no pages there.
                out[done // 8:npages] = 0
                break
            done += n

    def read_ranges(self, first_pages, npages, out: np.ndarray) -> np.ndarray:
        """Entries of several page ranges (ascending, not overlapping) into
        consecutive slices of ``out``.  Ranges that touch in VA (a library's
        r-x/r--/rw- mappings, a heap next to its neighbour) are read with the
        same syscalls."""
        first_pages = first_pages if isinstance(first_pages, list) else [int(x) for x in first_pages]
        npages = npages if isinstance(npages, list) else [int(x) for x in npages]
        last = self._runs_key
        if last is not None and last[0] == first_pages and last[1] == npages:
            runs = self._runs
        else:
            runs = []
            pos = 0
            for first, n in zip(first_pages, npages):
                if runs and runs[-1][0] + runs[-1][1] == first:
                    runs[-1][1] += n
                else:
                    runs.append([first, n, pos])
                pos += n
            # The same ranges again (an unchanged memory map): same runs.
            self._runs_key = (list(first_pages), list(npages))
            self._runs = runs
        with proc_errors(self.pid, "pagemap"):
            for first, n, at in runs:
                self._read(first, n, out[at:at + n])
        return out


def own_page_entry() -> int | None:
    """The pagemap entry of a page this process has just written (None if
    pagemap cannot be read): what the kernel shows here, probed by looking
    -- frame numbers (CAP_SYS_ADMIN), the soft-dirty bit (CONFIG_MEM_SOFT_DIRTY)."""
    import ctypes
    import mmap
    buf = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        buf[0] = 1
        view = ctypes.c_char.from_buffer(buf)
        addr = ctypes.addressof(view)
        del view                # the mmap cannot close while a view exports it
        # /proc/self, not /proc/<getpid()>: in a PID namespace that still
        # sees the host's /proc, our PID there is not getpid().
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            return int.from_bytes(os.pread(f.fileno(), 8, addr // mmap.PAGESIZE * 8), "little")
    except OSError:
        return None
    finally:
        buf.close()
