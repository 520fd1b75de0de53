"""NUMA: where a process's pages are (move_pages status queries), moving
them (move_pages with target nodes), and per-node memory counters.

move_pages(2) (CONFIG_MIGRATION) on another process needs CAP_SYS_NICE and
the right to ptrace-read it.  With ``nodes`` NULL it only reports each
page's node -- the real placement, nothing moves.  With MPOL_MF_MOVE it
moves only pages mapped by that process alone; shared pages report -EACCES.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

import numpy as np

from ..errors import TargetExited, UsageError
from . import syscalls
from .features import parse_node_list

MPOL_MF_MOVE = 1 << 1          # move pages mapped by this process only
NODE_ROOT = "/sys/devices/system/node"

# Pages per syscall: bounds the temporary arrays; the kernel itself works
# through the list in batches, so bigger calls save little.
CHUNK_PAGES = 1 << 16

# What a negative per-page status means (mm/migrate.c, move_pages(2)).
STATUS_MEANING = {
    "-ENOENT": "page not present (never touched, or swapped out)",
    "-EFAULT": "address not mapped, the shared zero page, or (before Linux 6.5) not present",
    "-EACCES": "page shared with another process (moving needs MPOL_MF_MOVE_ALL)",
    "-EBUSY": "page busy (under I/O or locked); may move on a later try",
    "-ENOMEM": "no free memory on the target node",
    "-EIO": "page under writeback or dirty file page that cannot be migrated",
    "-EINVAL": "dirty page of a file system that cannot migrate it",
    "-E2BIG": "the page is on a node that cannot be described",
}


def status_name(code: int) -> str:
    """-16 -> "-EBUSY"; a node number (>= 0) -> "node N"."""
    if code >= 0:
        return f"node {code}"
    return "-" + errno.errorcode.get(-code, str(-code))


def online_nodes() -> list[int]:
    try:
        with open(f"{NODE_ROOT}/online") as f:
            return parse_node_list(f.read())
    except OSError:
        return []


@dataclass(frozen=True, slots=True)
class NodeMemory:
    node: int
    total_bytes: int
    free_bytes: int
    used_bytes: int


def parse_node_meminfo(text: str) -> dict[str, int]:
    """'Node 0 MemTotal:  1546908 kB' lines -> {'MemTotal': bytes, ...}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "Node":
            out[parts[2].rstrip(":")] = int(parts[3]) * (1024 if parts[4:5] == ["kB"] else 1)
    return out


def node_memory(node: int) -> NodeMemory:
    with open(f"{NODE_ROOT}/node{node}/meminfo") as f:
        m = parse_node_meminfo(f.read())
    return NodeMemory(node, m.get("MemTotal", 0), m.get("MemFree", 0), m.get("MemUsed", 0))


def move_pages(pid: int, addrs: np.ndarray, nodes: np.ndarray | None = None) -> np.ndarray:
    """Per-page status (int32) for the page at each address of ``pid``.

    Without ``nodes``: the node each page is on, or -errno.  With ``nodes``
    (one per address): move each page there; the status is the node the
    page is on afterwards, or -errno for pages that did not move.
    """
    addrs = np.ascontiguousarray(addrs, dtype=np.uint64)
    status = np.full(addrs.size, -errno.ENOENT, dtype=np.int32)
    if nodes is not None:
        nodes = np.ascontiguousarray(nodes, dtype=np.int32)
        if nodes.size != addrs.size:
            raise ValueError("move_pages needs one node per address")
    nr = syscalls.number("move_pages")
    for lo in range(0, addrs.size, CHUNK_PAGES):
        hi = min(addrs.size, lo + CHUNK_PAGES)
        st = status[lo:hi]
        nd = None if nodes is None else ctypes.c_void_p(nodes[lo:hi].ctypes.data)
        rc = syscalls.libc.syscall(nr, ctypes.c_int(pid), ctypes.c_ulong(hi - lo),
                           ctypes.c_void_p(addrs[lo:hi].ctypes.data), nd,
                           ctypes.c_void_p(st.ctypes.data),
                           ctypes.c_int(MPOL_MF_MOVE if nodes is not None else 0))
        if rc < 0:
            _raise(ctypes.get_errno(), pid)
        # rc > 0: that many pages were not moved; their status says why.
    return status


def _raise(e: int, pid: int) -> None:
    if e == errno.EINVAL:
        # Callers identified the PID before: it went away since.  A zombie
        # (exited, not yet reaped) has no mm left: find_mm_struct -> EINVAL.
        raise TargetExited(pid)
    syscalls.raise_for("move_pages", e, pid, f"the pages of PID {pid}")
    if e in (errno.ENODEV, errno.EACCES):
        # Whole-call errors about a target node: it has no memory (ENODEV)
        # or the target's cpuset does not allow it (EACCES).
        # The node came from the user's --fast/--slow: a bad option value.
        raise UsageError(f"move_pages refused a target node for PID {pid}: "
                       f"{'the node has no memory' if e == errno.ENODEV else 'the process may not use it (cpuset)'}")
    raise OSError(e, os.strerror(e))


def pages_by_node(status: np.ndarray) -> dict[int, int]:
    """Count of pages per node from a status array (errors left out)."""
    ok = status[status >= 0]
    if ok.size == 0:
        return {}
    nodes, counts = np.unique(ok, return_counts=True)
    return {int(n): int(c) for n, c in zip(nodes, counts)}


def failures_by_name(status: np.ndarray) -> dict[str, int]:
    """Count of pages per error name ('-EBUSY': 3, ...) from a status array."""
    bad = status[status < 0]
    if bad.size == 0:
        return {}
    codes, counts = np.unique(bad, return_counts=True)
    return {status_name(int(c)): int(n) for c, n in zip(codes, counts)}
