"""Drain the per-CPU LRU batches of every CPU (lru_add_drain_all).

Freshly faulted pages wait in a per-CPU batch before they join an LRU list,
and page_idle ignores pages not on an LRU list: it neither marks them idle
nor reports them idle (KERNEL.md; measured in the VM: 0-5 of 8 fresh pages
on the LRU).  The kernel drains every CPU's batch in lru_cache_disable(),
which move_pages(2) calls whenever it is given target nodes (mm/migrate.c,
do_pages_move, since 5.13).  Moving one page of our own to the node it is
already on therefore drains all CPUs without migrating, compacting or
dropping anything -- unlike /proc/sys/vm/compact_memory or drop_caches.
"""
from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_move_pages = 279          # x86_64
MPOL_MF_MOVE = 1 << 1

_page: mmap.mmap | None = None


def drain_all() -> bool:
    """Drain every CPU's LRU batches; False if the kernel has no move_pages
    (CONFIG_MIGRATION off) -- callers then accept a few untracked pages."""
    global _page
    if _page is None:
        _page = mmap.mmap(-1, mmap.PAGESIZE)
        _page[0] = 1
    addr = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(_page)))
    pages = (ctypes.c_void_p * 1)(addr)
    status = (ctypes.c_int * 1)(-1)
    # First ask where the page is (nodes=NULL), then "move" it there.
    if _libc.syscall(_SYS_move_pages, 0, 1, pages, None, status, 0) != 0 or status[0] < 0:
        return False
    nodes = (ctypes.c_int * 1)(status[0])
    rc = _libc.syscall(_SYS_move_pages, 0, 1, pages, nodes, status, MPOL_MF_MOVE)
    return rc == 0


def drain_by_sysctl() -> None:
    """Fallback: compact_memory also drains, but compacts (moves frames)."""
    with open("/proc/sys/vm/compact_memory", "w") as f:
        f.write("1")
    os.sched_yield()
