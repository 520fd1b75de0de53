"""System-wide scanners: every process from one global pass per window.

``PageIdleSystemScanner`` is the point of ``idlemap top``: per window it reads
each process's pagemap once, takes the union of all frames, and marks and
reads the global page_idle bitmap for that union in one sorted, coalesced
pass (or, with ``mark="range"``, marks the whole frame range that holds user
pages, like Gregg's wss-v2).  Running one ``IdleBitmap`` per process instead
would mark and read every shared page (libc, the interpreter, shared memory)
once per process that maps it -- each time with an rmap walk over all of its
mappings -- and each process's mark would wipe the accessed bits the others
were about to read.  Here the bitmap cost grows with memory, once.

``KmodSystemScanner`` (system_kmod.py) walks each process's page tables
with idlemap's module instead, where it is loaded.

``ClearRefsSystemScanner`` is the fallback where the kernel has no page_idle
(CONFIG_IDLE_PAGE_TRACKING off, e.g. every Debian kernel): clear_refs per
process at the mark and ``Referenced`` from smaps_rollup at the read.  Exact
per process, but it costs one write and one rollup per process, and shared
pages are not deduplicated across processes.  It and the module's scanner
mark each process on its own, so they share ``PerProcessScanner``: the
marks by process identity, and samples whose totals are sums.

Processes that appear between two reads were not marked, so everything they
touched would look hot: they are marked and reported from the next window.
Processes that exit during a scan are dropped without an error.
"""
from __future__ import annotations

import abc
import errno
import os
import time
from dataclasses import dataclass

import numpy as np

from ..analysis import system as system_analysis
from ..analysis.spans import find_huge_blocks
from ..errors import AccessDenied, NoSuchProcess, UsageError
from .. import tlb
from ..kernel import clear_refs as cr
from ..kernel import kpageflags, lru, smaps
from ..kernel import pagemap as pm
from ..kernel.frames import SYSFS_IO_CAP, pwrite_runs
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE, read_raw, tracked_bounds
from ..kernel.page_idle import PageIdleBitmap
from ..kernel.tasks import TaskInfo, descendants, list_tasks, read_cgroup
from .base import Capabilities

HPAGE_PAGES = (2 << 20) // PAGE_SIZE
MARK_MODES = ("frames", "range")


@dataclass(frozen=True)
class Selection:
    """Which processes a scan covers: all (default), given PIDs, and/or the
    process trees under given PIDs.  Kernel threads and zombies never (no mm)."""
    pids: frozenset[int] | None = None
    trees: frozenset[int] | None = None
    # (pid, start ticks) of the given PIDs and tree roots when they were
    # chosen: a PID that exits and comes back as another process is not
    # the one asked for, so it drops out instead of being reported.
    identities: frozenset[tuple[int, int]] | None = None

    def apply(self, tasks: list[TaskInfo]) -> list[TaskInfo]:
        live = [t for t in tasks if not t.kthread and t.state not in ("Z", "X")]
        if self.pids is None and self.trees is None:
            return live
        if self.identities is not None:
            born = dict(self.identities)
            tasks = [t for t in tasks if t.pid not in born or born[t.pid] == t.start_ticks]
            here = {t.pid for t in tasks}
            live = [t for t in live if t.pid in here]
        keep: set[int] = set(self.pids or ())
        if self.trees:
            keep |= descendants(tasks, set(self.trees) & {t.pid for t in tasks})
        return [t for t in live if t.pid in keep]


class SystemScanner(abc.ABC):
    """``mark()`` starts a window for every selected process; ``sample()``
    ends it and, with ``remark``, starts the next one at once."""

    name = ""
    caps: Capabilities
    # Hand the window's frames and idle bits on in SystemSample.detail (the
    # exporter's advice); a scanner that reads no frames ignores it.
    keep_frames = False

    def __init__(self, selection: Selection | None = None, pss: bool = False, cgroups: bool = False):
        self.selection = selection or Selection()
        self.pss = pss
        self.cgroups = cgroups

    def tasks(self) -> list[TaskInfo]:
        return self.selection.apply(list_tasks())

    @abc.abstractmethod
    def mark(self) -> None: ...

    @abc.abstractmethod
    def sample(self, remark: bool = True) -> system_analysis.SystemSample: ...

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tracked_frames(spans, entries: np.ndarray, use_kpageflags: bool = True,
                   with_index: bool = False):
    """(pfns, pages) of the frames page_idle tracks for these pagemap entries:
    every present small page, and for a PMD-mapped THP only its head frame
    (the kernel keeps the idle flag there; tails always read "not idle")
    standing for 512 pages.  ``with_index``: also the entries' positions."""
    present = (entries & pm.PRESENT) != 0
    heads = find_huge_blocks(spans, entries) if entries.size else np.empty(0, np.int64)
    if heads.size and use_kpageflags:
        flags = kpageflags.read_flags(entries[heads] & pm.PFN_MASK)
        heads = heads[(flags & np.uint64(kpageflags.THP | kpageflags.COMPOUND_HEAD)) != 0]
    pages = np.ones(entries.size, dtype=np.int64)
    if heads.size:
        tails = (heads[:, None] + np.arange(1, HPAGE_PAGES)).ravel()
        present[tails] = False
        pages[heads] = HPAGE_PAGES
    idx = np.nonzero(present)[0]
    if with_index:
        return entries[idx] & pm.PFN_MASK, pages[idx], idx
    return entries[idx] & pm.PFN_MASK, pages[idx]


# Mappings closer than this are read with one pagemap read: the entries of
# the hole between them cost 8 bytes a page and read "not present", far
# cheaper than a syscall each (a Python process has ~300 mappings, most of
# them touching their neighbours).
MERGE_GAP_PAGES = 64


def vma_ranges(maps_text: bytes) -> list[tuple[int, int]]:
    """/proc/PID/maps -> [(first page, page count)] to read, merged.

    Left out: kernel pages (vdso, vvar, vsyscall: never on an LRU list) and
    PROT_NONE mappings (guard pages, Go/Java/V8 address-space reservations,
    which can be huge and cannot be accessed), so the pagemap read is
    proportional to memory the process can use.  A lighter parse than
    kernel.maps (kernel.maps.tracked_bounds): a system-wide scan reads
    thousands of mappings per window and needs only their bounds."""
    out: list[list[int]] = []
    for lo, hi in tracked_bounds(maps_text, accessible_only=True):
        first, end = lo >> PAGE_SHIFT, hi >> PAGE_SHIFT
        if out and first - (out[-1][0] + out[-1][1]) <= MERGE_GAP_PAGES:
            out[-1][1] = end - out[-1][0]
        else:
            out.append([first, end - first])
    return [(f, n) for f, n in out]


@dataclass(frozen=True, slots=True)
class _Run:
    """What find_huge_blocks needs of a span."""
    first_vpn: int
    npages: int
    offset: int


def walk_process(pid: int, use_kpageflags: bool = True, cache: dict | None = None,
                 key: object = None, guest_ranges: list[tuple[int, int]] | None = None):
    """Read one process's maps and pagemap -> its frames.  Raises
    NoSuchProcess (incl. TargetExited) if it is gone, AccessDenied.
    ``cache`` (with ``key``) keeps the parsed map of an unchanged process.
    With ``guest_ranges`` (a VMM's guest RAM, host VA ranges) the result is
    (all frames, the guest RAM's frames): one walk serves both."""
    text = read_raw(pid)
    hit = cache.get(key) if cache is not None else None
    if hit is not None and hit[0] == text:
        runs = hit[1]
    else:
        runs, off = [], 0
        for first, n in vma_ranges(text):
            runs.append(_Run(first, n, off))
            off += n
        if cache is not None:
            cache[key] = (text, runs)
    total = runs[-1].offset + runs[-1].npages if runs else 0
    entries = np.empty(total, dtype=np.uint64)
    with pm.Pagemap(pid) as pmap:
        for r in runs:
            pmap.read(r.first_vpn, r.npages, entries[r.offset:r.offset + r.npages])
    if guest_ranges is None:
        pfns, pages = tracked_frames(runs, entries, use_kpageflags)
        return system_analysis.ProcFrames.from_tracked(pfns, pages)
    pfns, pages, idx = tracked_frames(runs, entries, use_kpageflags, with_index=True)
    inside = _inside(runs, entries.size, guest_ranges)[idx]
    return system_analysis.ProcFrames.from_tracked(pfns, pages), system_analysis.ProcFrames.from_tracked(pfns[inside], pages[inside])


def _inside(runs, n: int, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Mask of the entries (laid out as ``runs``) whose page lies in ``ranges`` (VAs)."""
    mask = np.zeros(n, dtype=bool)
    for r in runs:
        for lo, hi in ranges:
            a = max(r.first_vpn, lo >> PAGE_SHIFT)
            b = min(r.first_vpn + r.npages, hi >> PAGE_SHIFT)
            if a < b:
                mask[r.offset + a - r.first_vpn:r.offset + b - r.first_vpn] = True
    return mask


class _Round:
    """What one walk over the selected processes found."""

    def __init__(self):
        self.tasks: list[TaskInfo] = []
        self.frames: list[system_analysis.ProcFrames] = []
        self.guests: list[tuple[object, system_analysis.ProcFrames] | None] = []   # (GuestLayout, frames) of VMMs
        self.cgroups: list[str] = []
        self.vanished = 0
        self.denied = 0
        self.errors: list[str] = []

    def lost(self, e: Exception, doing: str) -> None:
        """Count a process this pass could not read: gone (it exited since
        the listing), not ours, or any other error, kept as "DOING failed:
        why" for the sample's errors.  A pass never stops for one process."""
        if isinstance(e, NoSuchProcess):
            self.vanished += 1
        elif isinstance(e, AccessDenied):
            self.denied += 1
        else:
            self.errors.append(f"{doing} failed: {os.strerror(getattr(e, 'errno', None) or 0)}")


class PerProcessScanner(SystemScanner):
    """A system scanner that marks each process on its own (clear_refs, a
    module walk) rather than one global bitmap: each process's window runs
    from its own mark, kept by identity (PID, start time) so a reused PID
    is never read against another process's mark."""

    def __init__(self, selection: Selection | None = None, pss: bool = False, cgroups: bool = False):
        super().__init__(selection, pss, cgroups)
        self._marked: dict[tuple[int, int], float] = {}
        self.marked_at: float | None = None

    @abc.abstractmethod
    def _mark_one(self, t: TaskInfo, r: _Round) -> bool:
        """Mark ``t``; False (counted in ``r``) if it vanished or is not ours."""

    def mark(self) -> None:
        r = _Round()
        marked: dict = {}
        for t in self.tasks():
            if self._mark_one(t, r):
                # Each process's own time: the marks of many processes
                # take a while, and its window starts at its mark.
                marked[t.key] = time.monotonic()
        self._marked = marked
        self.marked_at = time.monotonic()

    def _finish(self, rows: list[system_analysis.ProcessUsage], window: float, marked: dict, new: int,
                r: _Round, t0: float, remark: bool) -> system_analysis.SystemSample:
        """The sample of a pass that read ``rows`` and left ``marked`` as the
        marks for the next one; totals and cgroups are sums (no frames to
        deduplicate shared pages by)."""
        self._marked = marked
        now = time.monotonic()
        if remark:
            self.marked_at = now
        cgs = system_analysis.cgroup_usage_summed(rows) if self.cgroups else []
        return system_analysis.SystemSample(
            backend=self.name, granularity=self.caps.granularity, time_s=now, window_s=window,
            processes=rows, cgroups=cgs, total_rss_bytes=sum(x.rss_bytes for x in rows),
            total_wss_bytes=sum(x.wss_bytes for x in rows), scan_s=now - t0, new_processes=new,
            vanished=r.vanished, denied=r.denied, errors=r.errors)


class PageIdleSystemScanner(SystemScanner):
    name = "page_idle"
    caps = Capabilities(
        granularity="page", per_page=True, needs_root=True, sees_guest_accesses=True,
        summary="one global page_idle mark and read per window over the union of all processes' frames",
        options=frozenset({"mark", "guests", "tlb_flush"}))

    def __init__(self, selection: Selection | None = None, pss: bool = False, cgroups: bool = False,
                 mark: str = "frames", drain_lru: bool = True, guests: bool = False,
                 tlb_flush: str = "none"):
        super().__init__(selection, pss, cgroups)
        if tlb_flush not in ("none", "soft-dirty"):
            raise UsageError("tlb flush must be none or soft-dirty")
        self.tlb_flush = tlb_flush
        # guests: also a row per VM (a VMM's guest RAM only), from the same walk.
        self.guests = guests
        self._layouts: dict = {}
        if mark not in MARK_MODES:
            raise UsageError(f"mark mode must be one of {', '.join(MARK_MODES)}")
        self.mark_mode = mark
        self.drain_lru = drain_lru
        self.bitmap = PageIdleBitmap()
        self._use_kpf = os.access(kpageflags.PATH, os.R_OK)
        self._marked: set[tuple[int, int]] = set()
        self.marked_at: float | None = None
        self._maps_cache: dict = {}

    def close(self) -> None:
        self.bitmap.close()

    def _walk(self) -> _Round:
        r = _Round()
        cache, self._maps_cache = self._maps_cache, {}
        for t in self.tasks():
            # Carry over only the parsed maps of processes still here, so
            # the cache cannot grow as processes come and go.
            if t.key in cache:
                self._maps_cache[t.key] = cache[t.key]
            layout = self._layout(t) if self.guests else None
            try:
                f = walk_process(t.pid, self._use_kpf, self._maps_cache, t.key,
                                 layout.hva_ranges() if layout is not None else None)
            except (NoSuchProcess, AccessDenied, OSError) as e:
                r.lost(e, f"reading PID {t.pid}'s pagemap")
                continue
            if layout is not None:
                f, g = f
                r.guests.append((layout, g))
            else:
                r.guests.append(None)
            r.tasks.append(t)
            r.frames.append(f)
            r.cgroups.append(read_cgroup(t.pid))
        return r

    def _layout(self, t: TaskInfo):
        """The guest layout of a VMM process (None for any other process),
        found once per process: a VMM's RAM mappings do not move."""
        if t.key not in self._layouts:
            from ..errors import IdlemapError
            from ..vm import describe, executable, find_guest_ram, vmm_kind
            layout = None
            # The executable as well as the name: a QEMU started with
            # -name ...,process=X has another name but the same exe.  One
            # readlink per process, once: the answer is kept.
            if vmm_kind((), executable(t.pid), t.comm) is not None:
                try:
                    layout = find_guest_ram(describe(t.pid))
                except (IdlemapError, OSError):
                    layout = None       # gone, or no guest RAM found
            if len(self._layouts) > 4096:
                self._layouts.clear()
            self._layouts[t.key] = layout
        return self._layouts[t.key]

    def _set(self, union: np.ndarray, tasks: list[TaskInfo] = (), read_plan=None) -> None:
        """Mark the union's frames idle; with ``read_plan`` (the plan the
        union was just read with) only those that did not read idle."""
        if self.drain_lru:
            # Fresh pages wait in per-CPU batches, invisible to page_idle,
            # until drained (kernel/lru.py): one drain for the whole system.
            lru.drain_all()
        if union.size == 0:
            pass
        elif self.mark_mode == "range":
            # Every frame from the lowest to the highest user frame: one
            # contiguous write, no sorting of scattered words (wss-v2's way).
            # It also marks page cache and other frames nobody here maps.
            w0, w1 = int(union[0]) >> 6, (int(union[-1]) >> 6) + 1
            try:
                pwrite_runs(self.bitmap.fd, np.array([w0]), np.array([w1 - w0]),
                            np.full(w1 - w0, np.uint64(0xFFFFFFFFFFFFFFFF)), cap=SYSFS_IO_CAP)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
        elif read_plan is not None:
            self.bitmap.remark_plan(read_plan)      # idle frames are still marked
        else:
            self.bitmap.set_idle(union)
        if self.tlb_flush == "soft-dirty":
            # As IdleBitmap's: each process's TLB flushed after the mark
            # (clear_refs=4 ends in flush_tlb_mm), so translations cached
            # before it cannot hide accesses (docs/tlb.md).  Costs one
            # page-table walk per process and clears their soft-dirty bits.
            for t in tasks:
                try:
                    tlb.flush(t.pid, t.start_ticks)
                except (NoSuchProcess, AccessDenied, OSError):
                    pass                # gone or not ours: its row says so at the read
        self.marked_at = time.monotonic()

    def mark(self) -> None:
        r = self._walk()
        self._set(system_analysis.union_of(r.frames), r.tasks)
        self._marked = {t.key for t in r.tasks}

    def sample(self, remark: bool = True) -> system_analysis.SystemSample:
        if self.marked_at is None:
            self.mark()
        t0 = time.monotonic()
        r = self._walk()
        union, union_pages = system_analysis.union_with_pages(r.frames)
        plan = self.bitmap.plan(union)
        idle = self.bitmap.read_plan(plan)
        now = time.monotonic()
        window = now - self.marked_at
        marked = self._marked
        if remark:
            self._set(union, r.tasks, plan)
            self._marked = {t.key for t in r.tasks}
        mapcount = None
        if self.pss:
            from ..kernel import kpagecount
            mapcount = kpagecount.read_counts(union)
        rows, rep_frames, guests = [], [], []
        new = 0
        for t, f, cg, g in zip(r.tasks, r.frames, r.cgroups, r.guests):
            if t.key not in marked:
                new += 1
                continue
            rss, wss, pss, wpss = system_analysis.attribute(f, union, idle, mapcount)
            rows.append(system_analysis.ProcessUsage(t.pid, t.comm, cg, rss, wss, window, pss, wpss))
            rep_frames.append(f)
            if g is not None:
                layout, gf = g
                grss, gwss, _, _ = system_analysis.attribute(gf, union, idle, None)
                guests.append(system_analysis.GuestUsage(t.pid, layout.vmm, layout.name, layout.accel,
                                            layout.ram_bytes, grss, gwss, window))
        if new == 0:      # the usual case: the union is exactly the reported frames
            total_rss = int(union_pages.sum()) * PAGE_SIZE
            total_wss = int(union_pages[~idle].sum()) * PAGE_SIZE
        else:
            total_rss, total_wss = system_analysis.union_usage(rep_frames, union, idle)
        cgs = system_analysis.cgroup_usage_exact(rows, rep_frames, union, idle) if self.cgroups else []
        return system_analysis.SystemSample(
            backend=self.name, granularity=self.caps.granularity, time_s=now, window_s=window,
            processes=rows, cgroups=cgs, guests=guests, total_rss_bytes=total_rss, total_wss_bytes=total_wss,
            scan_s=time.monotonic() - t0, frames=int(union.size), new_processes=new,
            vanished=r.vanished, denied=r.denied, errors=r.errors,
            detail=system_analysis.FrameDetail(union, idle, rep_frames) if self.keep_frames else None)


class ClearRefsSystemScanner(PerProcessScanner):
    name = "clear_refs"
    caps = Capabilities(
        granularity="mapping", per_page=False, needs_root=False, sees_guest_accesses=False,
        summary="clear_refs + smaps_rollup per process (no page_idle here): exact per process, "
                "cost grows with the number of processes, shared pages not deduplicated")

    def _mark_one(self, t: TaskInfo, r: _Round) -> bool:
        try:
            cr.clear_refs(t.pid, cr.CLEAR_ALL)
            return True
        except (NoSuchProcess, AccessDenied, OSError) as e:
            r.lost(e, f"clear_refs of PID {t.pid}")
            return False

    def sample(self, remark: bool = True) -> system_analysis.SystemSample:
        if self.marked_at is None:
            self.mark()
        t0 = time.monotonic()
        r = _Round()
        rows = []
        marked: dict = {}
        new = 0
        windows = []
        for t in self.tasks():
            since = self._marked.get(t.key)
            if since is None:
                new += 1
            else:
                try:
                    roll = smaps.read_rollup(t.pid)
                except (NoSuchProcess, AccessDenied, OSError) as e:
                    r.lost(e, f"reading PID {t.pid}'s smaps_rollup")
                    continue
                if not roll:       # exited between listing and reading: no mm left
                    r.vanished += 1
                    continue
                w = time.monotonic() - since
                windows.append(w)
                pss = roll.get("Pss", -1) if self.pss else -1
                rows.append(system_analysis.ProcessUsage(t.pid, t.comm, read_cgroup(t.pid), roll.get("Rss", 0),
                                            roll.get("Referenced", 0), w, pss, -1))
            if remark or since is None:
                if self._mark_one(t, r):
                    marked[t.key] = time.monotonic()
            elif since is not None:
                marked[t.key] = since
        window = float(np.median(windows)) if windows else 0.0
        return self._finish(rows, window, marked, new, r, t0, remark)
