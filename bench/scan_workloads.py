"""Benchmark-only workloads built on idlemap.testing.workload's protocol.

``ReservedWorkload`` adds one command to the child: ``reserve NAME GiB MiB``
maps GiB of address space PROT_NONE + MAP_NORESERVE (what a JVM, Go or V8
does for a heap) and makes the first MiB of it read-write, so the rest of
the protocol (touch, hot, stop) works on that MiB as on any mapping.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

from idlemap.testing.workload import Workload, _Child

MAP_NORESERVE = 0x4000
PROT_READ, PROT_WRITE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class _ReservingChild(_Child):
    def cmd_reserve(self, name, gib, mib):
        import numpy as np
        size = int(float(gib) * (1 << 30))
        used = int(float(mib) * (1 << 20))
        # Python's mmap cannot be made PROT_NONE and still export a writable
        # buffer, so map read-write + NORESERVE and take the rights away
        # from everything but the used part.
        mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        # 2 MiB-align the used part so THP could back it, like the other maps
        base = (-addr) % (2 << 20)
        for lo, hi in ((addr, addr + base), (addr + base + used, addr + size)):
            if hi > lo and _libc.mprotect(ctypes.c_void_p(lo), hi - lo, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
        mm.madvise(mmap.MADV_NOHUGEPAGE, base, used)
        arr = np.frombuffer(mm, dtype=np.uint8, count=used, offset=base)
        self.maps[name] = (mm, arr, addr + base)
        return f"{addr + base:#x}"

    def cmd_protnone(self, name, first, count):
        """mprotect(PROT_NONE) pages FIRST..FIRST+COUNT of NAME: their pages
        stay present in an inaccessible mapping."""
        _, _, addr = self.maps[name]
        a = addr + int(first) * mmap.PAGESIZE
        if _libc.mprotect(ctypes.c_void_p(a), int(count) * mmap.PAGESIZE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
        return ""


class ReservedWorkload(Workload):
    child = "bench.scan_workloads:main"     # same driver, other child

    def reserve(self, name: str, gib: float, mib: float) -> int:
        a = int(self.call("reserve", name, gib, mib), 16)
        self.addrs[name] = a
        return a


def main() -> None:
    _ReservingChild().serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
