"""Drain the per-CPU LRU batches of every CPU (lru_add_drain_all).

Freshly faulted pages wait in a per-CPU batch before they join an LRU list,
and page_idle ignores pages not on an LRU list: it neither marks them idle
nor reports them idle (measured in the VM: 0-5 of 8 fresh pages on the
LRU).  The kernel drains every CPU's batch in lru_cache_disable(),
which move_pages(2) calls whenever it is given target nodes (mm/migrate.c,
do_pages_move, since 5.13).  Moving one page of our own to the node it is
already on therefore drains all CPUs without migrating, compacting or
dropping anything -- unlike /proc/sys/vm/compact_memory or drop_caches.
"""
from __future__ import annotations

import ctypes
import mmap

from . import syscalls

MPOL_MF_MOVE = 1 << 1

# The page and the syscall's argument arrays, built once: this runs every
# window, and under TCG building the ctypes objects cost more than the two
# syscalls (~1.5 ms a call, measured in the test VM).
_args: tuple | None = None


def _setup() -> tuple:
    try:
        nr = syscalls.number("move_pages")
    except syscalls.UnknownSyscall:
        nr = -1         # an architecture we have no number for: like a kernel without it
    page = mmap.mmap(-1, mmap.PAGESIZE)
    page[0] = 1
    pages = (ctypes.c_void_p * 1)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return nr, page, pages, (ctypes.c_int * 1)(-1), (ctypes.c_int * 1)(-1)


def drain_all() -> bool:
    """Drain every CPU's LRU batches; False if the kernel has no move_pages
    (CONFIG_MIGRATION off, or an architecture kernel/syscalls.py has no
    number for) -- callers then accept a few untracked pages."""
    global _args
    if _args is None:
        _args = _setup()
    nr, _, pages, status, nodes = _args
    if nr < 0:
        return False
    # First ask where the page is (nodes=NULL), then "move" it there.
    status[0] = -1
    if syscalls.libc.syscall(nr, 0, 1, pages, None, status, 0) != 0 or status[0] < 0:
        return False
    nodes[0] = status[0]
    return syscalls.libc.syscall(nr, 0, 1, pages, nodes, status, MPOL_MF_MOVE) == 0
