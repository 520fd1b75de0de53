"""The RFC's object on an unpatched kernel: a per-process idle bitmap
indexed by virtual address.

``/proc/PID/idle_bitmap`` was proposed in 2018 and never merged.  We build
the same answer from pieces every kernel with CONFIG_IDLE_PAGE_TRACKING has:
``/proc/PID/pagemap`` gives the frame behind each virtual page, and the
global frame-indexed ``/sys/kernel/mm/page_idle/bitmap`` marks and tests
those frames.  Only the target's own frames are touched, sorted and
coalesced into as few ≤4 KiB syscalls as possible.

Kernel behaviour handled here (each measured in the test VM, see docs/):
 * per-CPU LRU batches: fresh pages are invisible to page_idle until the
   batches drain, so ``mark_idle`` drains them first (kernel/lru.py);
 * THP: only the head frame carries the idle flag; tails are skipped and a
   huge page counts whole (512 pages of 4 KiB);
 * TLB: marking idle clears accessed bits without a TLB flush, so a small
   hot set can read idle; ``tlb_flush`` names an optional mitigation.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import FeatureMissing, proc_errors
from .kernel import clear_refs as cr
from .kernel import kpageflags, lru
from .kernel import pagemap as pm
from .kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping, read_maps, trackable
from .kernel.page_idle import PageIdleBitmap
from .kernel.process import ProcessId, check_same, identify
from .records import IdleMap, Span

HPAGE_PAGES = (2 << 20) // PAGE_SIZE      # 512 on x86-64
TLB_FLUSH_MODES = ("none", "soft-dirty")


def spans_for(maps: Sequence[Mapping], ranges: Iterable[tuple[int, int]] | None) -> list[Span]:
    """Intersect mappings with VA ranges (None: whole mappings), in VA order."""
    out: list[Span] = []
    offset = 0
    rs = None if ranges is None else sorted((int(a), int(b)) for a, b in ranges)
    for m in maps:
        if not trackable(m):
            continue
        pieces = [(m.start, m.end)] if rs is None else [
            (max(m.start, a), min(m.end, b)) for a, b in rs if a < m.end and b > m.start]
        for lo, hi in pieces:
            lo = lo & ~(PAGE_SIZE - 1)
            hi = (hi + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if lo < hi:
                out.append(Span(m, lo, hi, offset))
                offset += (hi - lo) >> PAGE_SHIFT
    return out


def find_huge_blocks(spans: Sequence[Span], entries: np.ndarray) -> np.ndarray:
    """Flat indices of the first page of every 2 MiB-aligned run of 512
    present pages whose frames are consecutive from a 512-aligned frame:
    the shape of a PMD-mapped THP.  Callers confirm with kpageflags."""
    heads = []
    for s in spans:
        a0 = (-s.first_vpn) % HPAGE_PAGES
        nb = (s.npages - a0) // HPAGE_PAGES
        if nb <= 0:
            continue
        blk = entries[s.offset + a0:s.offset + a0 + nb * HPAGE_PAGES].reshape(nb, HPAGE_PAGES)
        head = blk[:, 0]
        ok = ((head & pm.PRESENT) != 0) & ((head & pm.PFN_MASK) % HPAGE_PAGES == 0)
        if not ok.any():
            continue
        cand = np.nonzero(ok)[0]
        sub = blk[cand]
        want = (sub[:, :1] & pm.PFN_MASK) + np.arange(HPAGE_PAGES, dtype=np.uint64)
        good = np.all(((sub & pm.PFN_MASK) == want) & ((sub & pm.PRESENT) != 0), axis=1)
        heads.append(s.offset + a0 + cand[good] * HPAGE_PAGES)
    return np.concatenate(heads) if heads else np.empty(0, np.int64)


class IdleBitmap:
    """Mark a process's pages idle and read which are still idle.

    >>> bm = IdleBitmap(pid)
    >>> bm.mark_idle()                 # every mapping; or ranges=[(lo, hi)]
    >>> ...                            # the workload runs
    >>> m = bm.read()                  # IdleMap: present/idle/huge per page
    >>> idle, present = m.rfc_words(lo, hi)   # the RFC's u64 layout
    """

    def __init__(self, pid: int | ProcessId, drain_lru: bool = True, tlb_flush: str = "none",
                 detect_thp: bool = True):
        self.proc = pid if isinstance(pid, ProcessId) else identify(pid)
        if tlb_flush not in TLB_FLUSH_MODES:
            raise ValueError(f"tlb_flush must be one of {TLB_FLUSH_MODES}")
        self.drain_lru = drain_lru
        self.tlb_flush = tlb_flush
        self.detect_thp = detect_thp
        self._bitmap = PageIdleBitmap()
        try:
            self._pagemap = pm.Pagemap(self.proc.pid)
        except BaseException:
            self._bitmap.close()
            raise
        self.marked_at: float | None = None
        self._has_kpf = True

    def close(self) -> None:
        self._bitmap.close()
        self._pagemap.close()

    def __enter__(self) -> "IdleBitmap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the two pagemap-derived views -------------------------------------
    def _walk(self, ranges) -> tuple[list[Span], np.ndarray]:
        check_same(self.proc)
        spans = spans_for(read_maps(self.proc.pid), ranges)
        total = spans[-1].offset + spans[-1].npages if spans else 0
        entries = np.empty(total, dtype=np.uint64)
        for s in spans:
            self._pagemap.read(s.first_vpn, s.npages, entries[s.offset:s.offset + s.npages])
        return spans, entries

    def _frames(self, spans, entries):
        """-> (present, huge, tracked_idx, tracked_pfns, block_heads)"""
        present = (entries & pm.PRESENT) != 0
        huge = np.zeros(entries.size, dtype=bool)
        heads = np.empty(0, np.int64)
        if self.detect_thp:
            heads = find_huge_blocks(spans, entries)
            if heads.size and self._has_kpf:
                try:
                    flags = kpageflags.read_flags(entries[heads] & pm.PFN_MASK)
                    heads = heads[(flags & np.uint64(kpageflags.THP | kpageflags.COMPOUND_HEAD)) != 0]
                except Exception:       # no kpageflags: trust the frame layout
                    self._has_kpf = False
            if heads.size:
                idx = (heads[:, None] + np.arange(HPAGE_PAGES)).ravel()
                huge[idx] = True
        tracked = present.copy()
        if heads.size:
            tracked[huge] = False
            tracked[heads] = True
        tracked_idx = np.nonzero(tracked)[0]
        return present, huge, tracked_idx, entries[tracked_idx] & pm.PFN_MASK, heads

    # -- the RFC operations ------------------------------------------------
    def mark_idle(self, ranges: Iterable[tuple[int, int]] | None = None) -> int:
        """Mark every present page in ``ranges`` (default: all mappings) idle.
        Returns the number of frames marked."""
        spans, entries = self._walk(ranges)
        _, _, _, pfns, _ = self._frames(spans, entries)
        self._set(pfns)
        return int(pfns.size)

    def _set(self, pfns: np.ndarray) -> None:
        if self.drain_lru:
            lru.drain_all()
        self._bitmap.set_idle(pfns)
        if self.tlb_flush == "soft-dirty":
            # clear_refs=4 ends with flush_tlb_mm() on the target's mm, so
            # translations cached before the mark cannot hide accesses.
            # Cost: the target's soft-dirty bits are cleared too.
            cr.clear_refs(self.proc.pid, cr.CLEAR_SOFT_DIRTY)
        self.marked_at = time.monotonic()

    def read(self, ranges: Iterable[tuple[int, int]] | None = None, remark: bool = False) -> IdleMap:
        """Which pages are idle now.  With ``remark`` the same frames are
        marked idle again right after reading (the next window starts)."""
        spans, entries = self._walk(ranges)
        present, huge, tidx, pfns, heads = self._frames(spans, entries)
        idle_t = self._bitmap.read_idle(pfns)
        now = time.monotonic()
        idle = np.zeros(entries.size, dtype=bool)
        idle[tidx] = idle_t
        if heads.size:
            # Tail pages share the head's answer: the kernel keeps one flag per THP.
            idle[huge] = np.repeat(idle[heads], HPAGE_PAGES)
        if entries.size and not present.any():
            check_same(self.proc)      # an exiting process reads as all holes
        window = now - self.marked_at if self.marked_at is not None else 0.0
        if remark:
            self._set(pfns)
        return IdleMap(self.proc.pid, spans, present, idle, huge,
                       (entries & pm.SWAPPED) != 0, now, window)


def require_page_idle() -> None:
    from .kernel import page_idle
    if not page_idle.available():
        raise FeatureMissing("page_idle bitmap", "CONFIG_IDLE_PAGE_TRACKING",
                             "per-page tracking needs it; `idlemap wss --backend clear_refs` "
                             "gives exact totals per mapping, and `idlemap demo` shows per-page "
                             "tracking in the test VM")
