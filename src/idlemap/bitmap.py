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

import os
import sys
import time
from collections.abc import Iterable

import numpy as np

from .errors import AccessDenied, FeatureMissing
from . import tlb
from .kernel import kpageflags, lru, maps, smaps
from .kernel import pagemap as pm
from .kernel.maps import PAGE_SHIFT, Mapping
from .kernel.page_idle import PageIdleBitmap
from .kernel.process import ProcessId, check_alive, check_same, identify, resident_pages
from .records import IdleMap, Span
from .analysis.spans import (CHECK_BLOCKS, HPAGE_PAGES, BlockMemo, block_starts, find_huge_blocks,
                             memcmp, spans_for)

TLB_FLUSH_MODES = ("none", "soft-dirty")

# PROT_NONE mappings of at least this many pages are candidates for being
# skipped as empty reservations (below it, reading their entries is cheap).
RESERVED_MIN_PAGES = 1 << 15
# smaps walks only populated page tables but spends more per resident page
# than pagemap spends per entry of a hole (measured under TCG: ~250 vs
# ~50 ns; on the host ~120 vs ~5 ns): ask smaps only when the holes
# outnumber the resident pages by more than this.
SMAPS_COST_PER_PAGE = 8

_LITTLE = sys.byteorder == "little"


def _set_blocks(arr: np.ndarray, heads: np.ndarray, value) -> None:
    """``arr[h:h + 512] = value`` for every h of ``heads`` (ascending,
    disjoint blocks inside ``arr``).  Heads with the same offset modulo 512
    are rows of one (m, 512) view of ``arr``: one fancy assignment each
    (a span's heads all share one), no pass over the whole array."""
    if not heads.size:
        return
    res = heads & (HPAGE_PAGES - 1)
    r0 = int(res[0])
    groups = [(r0, heads)] if (res == r0).all() else [(int(r), heads[res == r]) for r in np.unique(res)]
    for r, hs in groups:
        rows = (hs - r) // HPAGE_PAGES
        m = int(rows.max()) + 1
        arr[r:r + m * HPAGE_PAGES].reshape(m, HPAGE_PAGES)[rows] = value


def _top_bytes(entries: np.ndarray) -> np.ndarray:
    """Bits 56-63 of every entry (present, swapped, file...), one byte per
    page (a strided view on little-endian hosts: callers copy it into a
    buffer of their own): the flag tests then run on 1/8 of the data
    (measured under TCG: present + swapped 9.4 ms -> 1.3 ms per 256 Ki pages)."""
    if _LITTLE:
        return entries.view(np.uint8)[7::8]
    return (entries >> np.uint64(56)).astype(np.uint8)


_PRESENT_BYTE = np.uint8(1 << 7)     # bit 63
_SWAPPED_BYTE = np.uint8(1 << 6)     # bit 62


class IdleBitmap:
    """Mark a process's pages idle and read which are still idle.

    >>> bm = IdleBitmap(pid)
    >>> bm.mark_idle()                 # every mapping; or ranges=[(lo, hi)]
    >>> ...                            # the workload runs
    >>> m = bm.read()                  # IdleMap: present/idle/huge per page
    >>> idle, present = m.rfc_words(lo, hi)   # the RFC's u64 layout

    Large inaccessible (PROT_NONE) mappings that hold no pages -- address
    space reserved by a runtime (JVM, Go, V8) or a malloc arena -- are left
    out of the spans when smaps says they are empty, so a 1 TiB reservation
    costs one smaps read instead of 2 GiB of pagemap entries.
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
        self.last_marked = 0      # frames written by the last mark or re-mark
        self._has_kpf = True
        # Reused between rounds: the pagemap buffer (no page faults on a
        # fresh array every scan) and the spans of an unchanged memory map.
        self._entries = np.empty(0, np.uint64)
        self._spans_key: tuple | None = None
        self._spans: list[Span] = []
        self._span_io: tuple[list[int], list[int]] = ([], [])
        self._reserved: list[Mapping] = []
        self._last_plan: tuple[np.ndarray, object] | None = None
        # Per walk, reused: the span layout's aligned 2 MiB blocks (while
        # the layout is unchanged), scratch for the THP check and the
        # tracked mask, /proc/kpageflags kept open.
        self._walk_io: tuple | None = None
        self._blocks_io: tuple | None = None
        self._blocks = np.empty(0, np.int64)
        self._check_buf = np.empty(CHECK_BLOCKS * HPAGE_PAGES, np.uint64)
        self._memo = BlockMemo()
        self._top_buf = np.empty(0, np.uint8)
        self._cache: _WalkState | None = None
        self._kpf_fd = -1

    def close(self) -> None:
        self._bitmap.close()
        self._pagemap.close()
        if self._kpf_fd >= 0:
            os.close(self._kpf_fd)
            self._kpf_fd = -1

    def __enter__(self) -> "IdleBitmap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the two pagemap-derived views -------------------------------------
    def _spans_now(self, ranges) -> tuple[list[Span], tuple[list[int], list[int]]]:
        """The spans to walk now, and their (first page, page count) lists."""
        data = maps.read_raw(self.proc.pid)
        rs = None if ranges is None else tuple(sorted((int(a), int(b)) for a, b in ranges))
        key = (data, rs)
        if key != self._spans_key:
            self._spans = spans_for(maps.parse_maps(data), rs)
            self._reserved = [s.mapping for s in self._spans
                              if s.mapping.perms[:3] == "---" and s.npages >= RESERVED_MIN_PAGES]
            self._spans_key = key
            self._span_io = ([s.first_vpn for s in self._spans], [s.npages for s in self._spans])
        spans = self._spans
        if self._reserved:
            empty = self._empty_reserved()
            if empty:
                kept, offset = [], 0
                for s in spans:
                    if s.mapping.start in empty:
                        continue
                    kept.append(Span(s.mapping, s.start, s.end, offset))
                    offset += s.npages
                return kept, ([s.first_vpn for s in kept], [s.npages for s in kept])
        return list(spans), self._span_io   # callers own the list; the cache keeps its own

    def _empty_reserved(self) -> set[int]:
        """Starts of the big PROT_NONE mappings that hold no page, when
        asking smaps is cheaper than reading their pagemap entries.

        Checked on every walk, never cached: pages can appear in a PROT_NONE
        mapping without the maps changing (mprotect back and forth over the
        same bounds, a debugger writing through /proc/PID/mem).
        """
        pid = self.proc.pid
        hole_pages = sum(m.npages for m in self._reserved)
        resident = resident_pages(pid)
        if hole_pages <= SMAPS_COST_PER_PAGE * resident:
            return set()
        return smaps.unpopulated(pid, self._reserved)

    def _walk(self, ranges) -> tuple[list[Span], np.ndarray]:
        check_same(self.proc)
        spans, io = self._spans_now(ranges)
        firsts, counts = io
        total = sum(counts)
        if self._entries.size < total:
            self._entries = np.empty(total + total // 8, dtype=np.uint64)
        entries = self._entries[:total]
        self._pagemap.read_ranges(firsts, counts, entries)
        self._walk_io = io
        return spans, entries

    def _candidates(self, spans, entries) -> np.ndarray:
        """find_huge_blocks for this walk (the span layout's blocks kept)."""
        if not (self.detect_thp and entries.size >= HPAGE_PAGES):
            return np.empty(0, np.int64)
        io = self._walk_io
        if self._blocks_io is not io and self._blocks_io != io:
            self._blocks = block_starts(spans)
            self._blocks_io = io
        return find_huge_blocks(spans, entries, self._blocks, self._check_buf, self._memo)

    def _confirm(self, cand: np.ndarray, entries: np.ndarray) -> np.ndarray:
        """The candidates kpageflags calls THP heads, asked on every walk:
        a THP split in place keeps its frames (and its pagemap entries)."""
        if cand.size and self._has_kpf:
            try:
                if self._kpf_fd < 0:
                    self._kpf_fd = kpageflags.open_flags()
                flags = kpageflags.read_flags(entries[cand] & pm.PFN_MASK, fd=self._kpf_fd)
                return cand[(flags & np.uint64(kpageflags.THP | kpageflags.COMPOUND_HEAD)) != 0]
            except (AccessDenied, FileNotFoundError, PermissionError) as e:
                # No kpageflags here (not root, lockdown, no
                # CONFIG_PROC_PAGE_MONITOR): that does not change while we
                # run, so the frame layout alone decides from now on.  Any
                # other error is a real one and propagates.
                self._has_kpf = False
                _note_no_kpageflags(e)
        return cand

    def _state(self, spans, entries) -> "_WalkState":
        """What this walk's entries say: present, swapped, the THP heads,
        the tracked mask (every present page but the 511 tails of each THP)
        and the tracked frames.  The arrays are shared with the next walks
        and never written: present and swapped (and the state's huge mask)
        go out in IdleMaps as they are, read-only.

        Everything here but the heads is a function of the entries (and the
        span layout) alone: when they are byte-for-byte those of the last
        walk (one memcmp), only kpageflags is asked again, and if it names
        the same heads the last walk's state is this one's."""
        n = entries.size
        io = self._walk_io
        memo = self._memo
        c = self._cache
        same = (c is not None and c.n == n and c.detect_thp == self.detect_thp
                and (c.io is io or c.io == io) and memo.prev.size >= n
                and memcmp(entries.ctypes.data, memo.prev.ctypes.data, 8 * n) == 0)
        if not same:
            self._cache = c = None
        cand = c.cand if c is not None else self._candidates(spans, entries)
        heads = self._confirm(cand, entries)
        if c is not None and np.array_equal(heads, c.heads):
            return c
        if c is not None:
            present, swapped = c.present, c.swapped
        else:
            if self._top_buf.size < n:
                self._top_buf = np.empty(n + n // 8, np.uint8)
            top = self._top_buf[:n]
            np.copyto(top, _top_bytes(entries))
            present = top >= _PRESENT_BYTE
            swapped = np.bitwise_and(top, _SWAPPED_BYTE, out=top).astype(np.bool_)
        # Handed out as they are (no copy per read): read-only, so no
        # caller can change what the next walks reuse.
        present.flags.writeable = False
        swapped.flags.writeable = False
        tracked = present.copy()
        if heads.size:
            # Huge blocks are all present: clear them, then the heads come
            # back -- one frame per THP, the 511 tails are skipped.
            _set_blocks(tracked, heads, False)
            tracked[heads] = True
        pfns = entries[tracked]
        np.bitwise_and(pfns, pm.PFN_MASK, out=pfns)
        st = _WalkState(io, n, self.detect_thp, cand, heads, present, swapped, tracked, pfns)
        if memcmp is not None:
            if c is None:
                if memo.prev.size < n:
                    memo.prev = np.empty(n + n // 8, np.uint64)
                    memo.chunks = {}
                memo.prev[:n] = entries
            self._cache = st
        return st

    def _plan(self, pfns: np.ndarray):
        """The I/O plan for these frames; the last one again when the frames
        are the same (a read right after a mark, or the next round's mark:
        pages rarely move between the two)."""
        last = self._last_plan
        if last is not None and (last[0] is pfns or last[0].size == pfns.size and np.array_equal(last[0], pfns)):
            return last[1]
        plan = self._bitmap.plan(pfns)
        self._last_plan = (pfns, plan)
        return plan

    # -- the RFC operations ------------------------------------------------
    def mark_idle(self, ranges: Iterable[tuple[int, int]] | None = None) -> int:
        """Mark every present page in ``ranges`` (default: all mappings) idle.
        Returns the number of frames marked."""
        spans, entries = self._walk(ranges)
        pfns = self._state(spans, entries).pfns
        self._set(self._plan(pfns))
        return int(pfns.size)

    def mark_idle_mask(self, lo: int, bits: np.ndarray, ranges) -> int:
        """Mark idle the present pages of ``ranges`` whose bit is set;
        ``bits[i]`` stands for the page at ``lo + i*PAGE_SIZE``.  A huge page
        is marked whole if any of its pages' bits is set (the kernel keeps one
        idle flag per THP).  Returns the number of frames marked.

        For a written bitmap (the FUSE ``idle_bitmap``): it may hold hundreds
        of thousands of separate runs of 1 bits, and one VA range per run
        would make the mapping intersection quadratic, so the mask picks
        frames straight from one pagemap walk."""
        spans, entries = self._walk(ranges)
        if not spans:
            return 0
        st = self._state(spans, entries)
        heads, pfns = st.heads, st.pfns
        tidx = np.flatnonzero(st.tracked)
        vpn = np.empty(entries.size, dtype=np.int64)
        for s in spans:
            vpn[s.offset:s.offset + s.npages] = np.arange(s.first_vpn, s.first_vpn + s.npages)
        rel = vpn[tidx] - (lo >> PAGE_SHIFT)
        inside = (rel >= 0) & (rel < bits.size)
        want = np.zeros(tidx.size, dtype=bool)
        want[inside] = bits[rel[inside]]
        if heads.size:
            # Any set bit within the 512 pages of a THP selects its head.
            csum = np.concatenate(([0], np.cumsum(bits, dtype=np.int64)))
            h0 = vpn[heads] - (lo >> PAGE_SHIFT)
            a = np.clip(h0, 0, bits.size)
            b = np.clip(h0 + HPAGE_PAGES, 0, bits.size)
            pos = np.searchsorted(tidx, heads)
            want[pos] = (csum[b] - csum[a]) > 0
        sel = pfns[want]
        if sel.size:
            self._set(self._bitmap.plan(sel))   # not _plan: a subset must not evict the full plan
        return int(sel.size)

    def _set(self, plan, idle: np.ndarray | None = None) -> None:
        """Mark the plan's frames; with ``idle`` (what the read of this plan
        just gave) only those that did not read idle."""
        if self.drain_lru:
            lru.drain_all()
        # Frames that just read idle are already marked: only the others
        # are written (PageIdleBitmap.remark_plan says why that is exact).
        if idle is None:
            self.last_marked = self._bitmap.set_plan(plan)
        elif self._bitmap.remark_plan(plan):
            self.last_marked = int(idle.size - np.count_nonzero(idle))
        else:                   # the read was not of this plan: all were marked
            self.last_marked = plan.npfns
        if self.tlb_flush == "soft-dirty":
            # After the mark, so translations cached before it cannot hide
            # accesses (tlb.py; the order matters: docs/tlb.md).
            tlb.flush(self.proc.pid, self.proc.start_ticks)
        self.marked_at = time.monotonic()

    def read(self, ranges: Iterable[tuple[int, int]] | None = None, remark: bool = False) -> IdleMap:
        """Which pages are idle now.  With ``remark`` the next window starts
        right after reading: the frames that read accessed are marked idle
        again, and those that read idle, still marked, are left as they are
        (half the kernel's work for an idle frame, and nothing accessed in
        between is lost)."""
        spans, entries = self._walk(ranges)
        n = entries.size
        st = self._state(spans, entries)
        heads, pfns = st.heads, st.pfns
        plan = self._plan(pfns)
        idle_t = self._bitmap.read_plan(plan)
        now = time.monotonic()
        idle = np.zeros(n, dtype=bool)
        if st.tidx is not None:
            idle[st.tidx] = idle_t          # few tracked pages (THP): index, not a mask pass over n
        else:
            idle[st.tracked] = idle_t
        if heads.size:
            # Tail pages share the head's answer: the kernel keeps one flag per THP.
            _set_blocks(idle, heads[idle[heads]], True)
        huge = st.huge_pages()
        if not pfns.size:
            # An exiting process reads as no mappings or all holes: that is
            # not a reading of it (bitmap -o would replace a file with zeros).
            check_alive(self.proc)
        window = now - self.marked_at if self.marked_at is not None else 0.0
        if remark:
            self._set(plan, idle_t)
        return IdleMap(self.proc.pid, spans, st.present, idle, huge, st.swapped, now, window)


class _WalkState:
    __slots__ = ("io", "n", "detect_thp", "cand", "heads", "present", "swapped", "tracked", "pfns", "tidx",
                 "_huge")

    def __init__(self, io, n, detect_thp, cand, heads, present, swapped, tracked, pfns):
        self.io, self.n, self.detect_thp, self.cand, self.heads = io, n, detect_thp, cand, heads
        self.present, self.swapped, self.tracked, self.pfns = present, swapped, tracked, pfns
        # Where the tracked pages are, when they are few (THP: one in 512):
        # scattering the answer by index then beats a mask pass over n
        # (measured 11 vs 77 us for 8 Ki of 290 Ki pages, natively).
        self.tidx = np.flatnonzero(tracked) if pfns.size * 8 < n else None
        self._huge = None

    def huge_pages(self) -> np.ndarray:
        """Per page: inside a THP (read-only, made once per state)."""
        if self._huge is None:
            h = np.zeros(self.n, dtype=bool)
            if self.heads.size:
                _set_blocks(h, self.heads, True)
            h.flags.writeable = False
            self._huge = h
        return self._huge


_kpf_noted = False


def _note_no_kpageflags(e: Exception) -> None:
    """Say once per process that THP heads go unconfirmed (a split THP
    whose frames stayed in place would then count as huge)."""
    global _kpf_noted
    if not _kpf_noted:
        _kpf_noted = True
        print(f"idlemap: {kpageflags.PATH} is not readable ({e}); transparent huge pages are recognised "
              "by their frame layout alone", file=sys.stderr, flush=True)


def require_page_idle() -> None:
    from .kernel import page_idle
    if not page_idle.available():
        raise FeatureMissing("page_idle bitmap", "CONFIG_IDLE_PAGE_TRACKING",
                             "per-page tracking needs it; `idlemap wss --backend clear_refs` "
                             "gives exact totals per mapping, and `idlemap demo` shows per-page "
                             "tracking in the test VM")
