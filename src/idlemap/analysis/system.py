"""System-wide attribution: one reading of the global idle bitmap, many processes.

A system-wide round reads every process's pagemap, takes the union of all
their frames, asks the page_idle bitmap about that union once, and then
attributes the answer back to each process here.  Everything in this module
is pure numpy over arrays the scanner gathered, so it is tested on made-up
frames (tests/unit/test_system_attribution.py).

Counting rules (docs/fleet.md repeats them for users):
 * A page shared by several processes counts whole in each of them (like
   RSS), and once per process even if that process maps it twice.
 * With PSS weighting a page counts 1/mapcount in each mapping of it, so the
   PSS figures of all processes add up to the memory really in use.
 * A cgroup counts the union of its processes' frames: a page shared inside
   the group counts once.
 * A transparent huge page is one frame (its head) weighing 512 pages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..kernel.maps import PAGE_SIZE

SORT_KEYS = ("wss", "rss", "cold", "pss")


@dataclass(frozen=True, slots=True)
class ProcFrames:
    """The frames one process maps, each once: sorted unique ``pfns``, how
    many 4 KiB pages each stands for (512 for a THP head) and how many times
    the process maps it (for PSS)."""
    pfns: np.ndarray          # uint64, sorted, unique
    pages: np.ndarray         # int64
    maps: np.ndarray          # int64, >= 1

    @classmethod
    def from_tracked(cls, pfns: np.ndarray, pages: np.ndarray) -> "ProcFrames":
        """From one entry per present tracked virtual page (frames repeat
        where the process maps a frame at two addresses)."""
        if pfns.size == 0:
            return EMPTY
        u, first, counts = np.unique(pfns.astype(np.uint64), return_index=True, return_counts=True)
        return cls(u, pages[first].astype(np.int64), counts.astype(np.int64))

    @property
    def size(self) -> int:
        return int(self.pfns.size)


EMPTY = ProcFrames(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64))


class _Resident:
    """What a usage record derives from its rss_bytes and wss_bytes: one
    definition of cold and of the working-set share for processes, cgroups
    and guests.  Empty __slots__, so the slotted records stay slotted."""
    __slots__ = ()
    rss_bytes: int
    wss_bytes: int

    @property
    def cold_bytes(self) -> int:
        return max(0, self.rss_bytes - self.wss_bytes)

    @property
    def wss_pct(self) -> float:
        return 100.0 * self.wss_bytes / self.rss_bytes if self.rss_bytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ProcessUsage(_Resident):
    """One process in one window; bytes throughout, -1 where not measured."""
    pid: int
    comm: str
    cgroup: str
    rss_bytes: int
    wss_bytes: int            # accessed during the window
    window_s: float
    pss_bytes: int = -1
    wss_pss_bytes: int = -1   # the working set, PSS-weighted

    def as_dict(self) -> dict:
        return {"pid": self.pid, "comm": self.comm, "cgroup": self.cgroup,
                "rss_bytes": self.rss_bytes, "wss_bytes": self.wss_bytes,
                "cold_bytes": self.cold_bytes, "wss_pct": round(self.wss_pct, 2),
                "pss_bytes": self.pss_bytes, "wss_pss_bytes": self.wss_pss_bytes,
                "window_s": round(self.window_s, 4)}


@dataclass(frozen=True, slots=True)
class CgroupUsage(_Resident):
    """A cgroup v2 group: the processes directly in it, shared pages once."""
    cgroup: str
    nprocs: int
    rss_bytes: int
    wss_bytes: int
    pss_bytes: int = -1
    wss_pss_bytes: int = -1

    def as_dict(self) -> dict:
        return {"cgroup": self.cgroup, "nprocs": self.nprocs, "rss_bytes": self.rss_bytes,
                "wss_bytes": self.wss_bytes, "cold_bytes": self.cold_bytes,
                "wss_pct": round(self.wss_pct, 2), "pss_bytes": self.pss_bytes,
                "wss_pss_bytes": self.wss_pss_bytes}


@dataclass(frozen=True, slots=True)
class GuestUsage(_Resident):
    """A VM in one window: its VMM's guest RAM only (not the VMM's own heap
    or code), measured in the same global pass as the processes."""
    pid: int                  # the VMM
    vmm: str                  # qemu, firecracker ...
    name: str                 # guest name (QEMU -name), "" if none
    accel: str                # kvm, tcg, unknown
    ram_bytes: int            # guest RAM size
    rss_bytes: int            # guest RAM resident on the host
    wss_bytes: int            # guest RAM accessed during the window
    window_s: float

    def as_dict(self) -> dict:
        return {"pid": self.pid, "vmm": self.vmm, "name": self.name, "accel": self.accel,
                "ram_bytes": self.ram_bytes, "rss_bytes": self.rss_bytes, "wss_bytes": self.wss_bytes,
                "cold_bytes": self.cold_bytes, "window_s": round(self.window_s, 4)}


@dataclass(frozen=True, slots=True)
class FrameDetail:
    """What a page_idle system window read, frame by frame (kept only when
    asked: the exporter's advice needs it, and it is ~9 bytes a frame)."""
    union: np.ndarray             # sorted unique frames
    idle: np.ndarray              # bool per union frame
    frames: list[ProcFrames]      # aligned with SystemSample.processes


@dataclass(slots=True)
class SystemSample:
    """One system-wide window."""
    backend: str
    granularity: str
    time_s: float                 # CLOCK_MONOTONIC at the end of the window
    window_s: float               # mark -> read
    processes: list[ProcessUsage]
    cgroups: list[CgroupUsage] = field(default_factory=list)
    guests: list[GuestUsage] = field(default_factory=list)   # VMs, when asked for
    total_rss_bytes: int = 0      # every reported process, shared pages once where known
    total_wss_bytes: int = 0
    scan_s: float = 0.0           # wall time of the round's work (walk + bitmap + attribution)
    frames: int = 0               # frames in the global union (page_idle)
    new_processes: int = 0        # first seen now: marked now, reported from the next window
    vanished: int = 0             # exited while being scanned (not an error)
    denied: int = 0               # not readable (not root?)
    errors: list[str] = field(default_factory=list)   # anything else, one sentence each
    detail: FrameDetail | None = None    # with keep_frames (page_idle only)


def union_of(frames: list[ProcFrames]) -> np.ndarray:
    """Sorted unique frames of all processes: what one global pass marks and reads."""
    return union_with_pages(frames)[0]


def union_with_pages(frames: list[ProcFrames]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique frames of all processes, pages each stands for)."""
    if not frames:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    u, first = np.unique(np.concatenate([f.pfns for f in frames]), return_index=True)
    return u, np.concatenate([f.pages for f in frames])[first]


def lookup(union: np.ndarray, values: np.ndarray, pfns: np.ndarray) -> np.ndarray:
    """values[i] belongs to union[i]; return the value of each of ``pfns``
    (all of which must be in the union)."""
    return values[np.searchsorted(union, pfns)]


def attribute(f: ProcFrames, union: np.ndarray, idle: np.ndarray,
              mapcount: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(rss, wss, pss, wss_pss) bytes of one process from the union's idle
    bits (and mapcounts, for PSS; -1 without them)."""
    if f.size == 0:
        return 0, 0, (0 if mapcount is not None else -1), (0 if mapcount is not None else -1)
    acc = ~lookup(union, idle, f.pfns)
    rss = int(f.pages.sum()) * PAGE_SIZE
    wss = int(f.pages[acc].sum()) * PAGE_SIZE
    if mapcount is None:
        return rss, wss, -1, -1
    # A frame counted here `maps` times can't be mapped fewer times than
    # that; a smaller kpagecount means it changed between the two reads.
    mc = np.maximum(lookup(union, mapcount, f.pfns), f.maps)
    share = f.pages * f.maps / mc
    return rss, wss, int(round(share.sum() * PAGE_SIZE)), int(round(share[acc].sum() * PAGE_SIZE))


def union_usage(frames: list[ProcFrames], union: np.ndarray, idle: np.ndarray) -> tuple[int, int]:
    """(rss, wss) bytes of a set of processes with shared frames counted once."""
    if not frames:
        return 0, 0
    pf = np.concatenate([f.pfns for f in frames])
    pg = np.concatenate([f.pages for f in frames])
    u, first = np.unique(pf, return_index=True)
    pages = pg[first]
    acc = ~lookup(union, idle, u)
    return int(pages.sum()) * PAGE_SIZE, int(pages[acc].sum()) * PAGE_SIZE


def cgroup_usage_exact(rows: list[ProcessUsage], frames: list[ProcFrames], union: np.ndarray,
                       idle: np.ndarray) -> list[CgroupUsage]:
    """Per cgroup: the union of its processes' frames (page_idle)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.cgroup, []).append(i)
    out = []
    for cg, idx in groups.items():
        rss, wss = union_usage([frames[i] for i in idx], union, idle)
        pss = _sum_known([rows[i].pss_bytes for i in idx])
        wpss = _sum_known([rows[i].wss_pss_bytes for i in idx])
        out.append(CgroupUsage(cg, len(idx), rss, wss, pss, wpss))
    return out


def cgroup_usage_summed(rows: list[ProcessUsage]) -> list[CgroupUsage]:
    """Per cgroup by adding its processes (clear_refs: no frames, so pages
    shared inside the group count once per process)."""
    groups: dict[str, list[ProcessUsage]] = {}
    for r in rows:
        groups.setdefault(r.cgroup, []).append(r)
    return [CgroupUsage(cg, len(rs), sum(r.rss_bytes for r in rs), sum(r.wss_bytes for r in rs),
                        _sum_known([r.pss_bytes for r in rs]), _sum_known([r.wss_pss_bytes for r in rs]))
            for cg, rs in groups.items()]


def _sum_known(vals: list[int]) -> int:
    return -1 if any(v < 0 for v in vals) else sum(vals)


def sort_rows(rows: list, key: str = "wss", n: int = 0) -> list:
    """Largest first by wss|rss|cold|pss; ties by PID/cgroup name; n=0 keeps all."""
    if key not in SORT_KEYS:
        raise ValueError(f"sort key must be one of {SORT_KEYS}")
    attr = {"wss": "wss_bytes", "rss": "rss_bytes", "cold": "cold_bytes", "pss": "pss_bytes"}[key]
    out = sorted(rows, key=lambda r: (-getattr(r, attr), getattr(r, "pid", 0), getattr(r, "cgroup", "")))
    return out[:n] if n > 0 else out
