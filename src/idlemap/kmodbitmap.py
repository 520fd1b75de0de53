"""IdleBitmap's interface on idlemap's kernel module (/dev/idlemap).

Same object as bitmap.IdleBitmap -- ``mark_idle(ranges)``, ``read(ranges,
remark)`` -> records.IdleMap -- so everything above it works unchanged, but
the answer comes from one walk of the target's own page tables in the
kernel (kmod/, docs/kmod.md): no pagemap, no frame numbers, no kpageflags,
no page_idle; THP is read from the PMD itself.  The module flushes the TLB
after clearing accessed bits, so there is no ``tlb_flush`` option: a hot
page cannot hide behind a cached translation (docs/tlb.md).

Differences from the page_idle path, by design of a per-process walk:
 * an access by *another* process sharing the frame is not seen (page_idle
   walks every mapping of the frame); a page this process never touched
   reads idle here even if a neighbour did;
 * pages not yet on an LRU list (per-CPU batches) and non-LRU pages (the
   shared zero page) are tracked like any other: no LRU drain is needed;
 * KVM guests' accesses through EPT/NPT are not seen (no mmu-notifier
   young hooks for modules): keep page_idle for VMMs (docs/kmod.md);
 * ``last_marked`` counts pages (a THP: 512), not frames.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .analysis.spans import spans_for
from .errors import NoSuchProcess, TargetExited
from .kernel import kmod, smaps
from .kernel.features import swap_configured
from .kernel.maps import PAGE_SHIFT, Mapping, parse_maps, read_raw
from .kernel.process import ProcessId, check_same, identify
from .records import IdleMap, Span


def _bits(rows: np.ndarray) -> np.ndarray:
    """Rows of u64 bitmap words -> rows of one bool per bit (page)."""
    return np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little").view(np.bool_)


# PROT_NONE mappings of at least this many pages are checked for being
# empty reservations (the page_idle path's threshold, bitmap.py).
RESERVED_MIN_PAGES = 1 << 15

# Spans closer than this (and with no other mapping between them) are read
# by one walk: a gap costs the module at most one turn of its 128 MiB chunk
# loop and its bitmap bits, while a call costs a system call, the bitmaps'
# set-up in Python and, when it re-marks, a TLB flush -- a Python process
# has ~170 mappings, mostly adjacent, and one call per mapping made a
# 256 MiB read ~10x slower than the module's walk of it.
MAX_GAP_PAGES = 1 << 15


# The walks' bitmaps reach the IdleMap's arrays by one unpack of all of
# them, then a copy per run of pages kept (slices) or, with more runs than
# this, one gather with an index per page.  A Python process reads in ~5
# walks and ~14 runs: the per-call overhead of numpy, which TCG slows ~14x,
# is most of a steady read's Python time (an np.take over 100 Ki pages:
# 66 us against 5 us in 10 slices, host, native).
MAX_SLICE_RUNS = 64

NO_BITMAPS = kmod.NO_BITMAPS


@dataclass(slots=True)
class _Group:
    """One walk: VA [start, end), whose pages land at [out_lo, out_hi) of
    the IdleMap's arrays; ``runs``: the walk's page ranges [a, b) to keep,
    in order (one run when the spans fill the range without gaps);
    ``rows``: its four bitmaps (idle, present, huge, swapped), and ``ptrs``
    their addresses, set by the layout."""
    start: int
    end: int
    out_lo: int
    out_hi: int
    runs: list[tuple[int, int]]
    rows: list[np.ndarray] | None = None
    ptrs: tuple[int, int, int, int] = NO_BITMAPS

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT


def _groups(spans: list[Span], maps: list[Mapping]) -> list[_Group]:
    """Consecutive spans merged into walks.  Two spans merge only across a
    gap of at most MAX_GAP_PAGES that no mapping touches (a gap inside a
    mapping left out -- another range, an untrackable kind -- would have its
    accessed bits cleared by a re-mark)."""
    starts = np.array([m.start for m in maps], np.uint64)
    ends = np.array([m.end for m in maps], np.uint64)
    runs: list[list[Span]] = []
    for s in spans:
        if runs:
            prev = runs[-1][-1]
            gap = (s.start - prev.end) >> PAGE_SHIFT
            if gap == 0 or (gap <= MAX_GAP_PAGES and not np.any(
                    (starts < np.uint64(s.start)) & (ends > np.uint64(prev.end)))):
                runs[-1].append(s)
                continue
        runs.append([s])
    out = []
    for run in runs:
        lo, hi = run[0].start, run[-1].end
        n = sum(s.npages for s in run)
        pieces: list[tuple[int, int]] = []
        for s in run:
            a, b = (s.start - lo) >> PAGE_SHIFT, (s.end - lo) >> PAGE_SHIFT
            if pieces and pieces[-1][1] == a:
                pieces[-1] = (pieces[-1][0], b)          # adjacent spans: one run
            else:
                pieces.append((a, b))
        out.append(_Group(lo, hi, run[0].offset, run[0].offset + n, pieces))
    return out


class _Layout:
    """What a read needs while the memory map is unchanged: the spans, the
    walks, one buffer holding every walk's four bitmaps, how their bits
    map to the IdleMap's pages, and read-only zeros handed out as the huge
    and swapped arrays when no walk found one."""

    def __init__(self, spans: list[Span], groups: list[_Group]):
        self.spans, self.groups = spans, groups
        self.total = sum(s.npages for s in spans)
        words = [(g.npages + 63) // 64 for g in groups]
        self.bufs = np.empty((4, sum(words)), np.uint64)
        # (first bit in a row of bufs, first page in the IdleMap, pages),
        # merged where both sides continue
        self.copies: list[tuple[int, int, int]] = []
        w0 = 0
        for g, nw in zip(groups, words):
            g.rows = [self.bufs[k, w0:w0 + nw] for k in range(4)]    # contiguous pieces of each row
            g.ptrs = kmod.bitmap_addresses(g.npages, g.rows)         # checked once, used every read
            d = g.out_lo
            for a, b in g.runs:
                src = w0 * 64 + a
                s0, d0, n0 = self.copies[-1] if self.copies else (-1, -1, 0)
                if s0 + n0 == src and d0 + n0 == d:
                    self.copies[-1] = (s0, d0, n0 + b - a)
                else:
                    self.copies.append((src, d, b - a))
                d += b - a
            w0 += nw
        self.take = None
        if len(self.copies) > MAX_SLICE_RUNS:
            self.take = np.concatenate([np.arange(s, s + n) for s, _, n in self.copies])
        self.zeros = np.zeros(self.total, np.bool_)
        self.zeros.flags.writeable = False

    def pages(self, rows: np.ndarray) -> np.ndarray:
        """Rows of bufs (all walks' words) -> rows of one bool per page of
        the spans, in the IdleMap's order: one unpack, then the copies."""
        bits = _bits(rows)
        out = np.empty((rows.shape[0], self.total), np.bool_)
        if self.take is not None:
            np.take(bits, self.take, axis=1, out=out)
        else:
            for s, d, n in self.copies:
                out[:, d:d + n] = bits[:, s:s + n]
        return out


class KmodBitmap:
    """Mark a process's pages idle and read which are still idle, in the kernel.

    >>> with KmodBitmap(pid) as bm:
    ...     bm.mark_idle()
    ...     m = bm.read(remark=True)    # read and re-mark: one walk
    """

    def __init__(self, pid: int | ProcessId, drain_lru: bool = True, tlb_flush: str = "none",
                 detect_thp: bool = True):
        # drain_lru, tlb_flush, detect_thp: accepted for IdleBitmap's
        # callers; the module needs none of them (see the module docstring).
        self.proc = pid if isinstance(pid, ProcessId) else identify(pid)
        self.dev = kmod.Device(self.proc.pid)
        try:
            check_same(self.proc)       # the PID bound is the process identified
        except BaseException:
            self.dev.close()
            raise
        self.marked_at: float | None = None
        self.last_marked = 0
        # Reused while the memory map (and the set of empty reservations)
        # is unchanged: the spans, their walks, and the walks' bitmaps.
        self._key: tuple | None = None
        self._maps: list[Mapping] = []
        self._all: list[Span] = []
        self._reserved: list[Span] = []
        self._layout: _Layout = _Layout([], [])
        self._layout_key: frozenset | None = None

    def close(self) -> None:
        self.dev.close()

    def __enter__(self) -> "KmodBitmap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _empty_reserved(self) -> frozenset[int]:
        """Starts of the big PROT_NONE mappings (address space a JVM, Go or
        V8 reserves) that hold no page now: left out of the read, whose
        arrays would otherwise hold a bit per page of a terabyte.  The
        module counts their present pages (it walks only populated page
        tables); a swapped page is not present, so where swap is configured
        smaps confirms (Rss and Swap 0).  Checked on every walk: pages can
        appear without the memory map changing (mprotect back and forth)."""
        if not self._reserved:
            return frozenset()
        empty = {s.mapping.start for s in self._reserved
                 if self.dev.walk_at(s.start, s.end, NO_BITMAPS, kmod.walk_flags(clear=False))[0] == 0}
        if empty and swap_configured():
            empty &= smaps.unpopulated(self.proc.pid, [s.mapping for s in self._reserved
                                                       if s.mapping.start in empty])
        return frozenset(empty)

    def _plan(self, ranges) -> _Layout:
        """The spans to read now, their walks and bitmap buffers."""
        # The module's signature of the memory map (one ioctl) says whether
        # /proc/PID/maps can have changed: the text is read and parsed only
        # then -- it was a quarter of a steady read.  Taken before the text,
        # so a change in between shows as a new signature next time.
        # Exited, reaped or a zombie (no mm): TargetExited from the module.
        sig = self.dev.maps_signature()
        rs = None if ranges is None else tuple(sorted((int(a), int(b)) for a, b in ranges))
        key = (sig, rs)
        if key != self._key:
            try:
                data = read_raw(self.proc.pid)
            except TargetExited:
                raise
            except NoSuchProcess:
                # It was bound, so it existed: its /proc entry vanished because
                # it exited and was reaped after the signature.
                raise TargetExited(self.proc.pid) from None
            if not data:
                check_same(self.proc)       # a zombie has an empty map
            self._maps = parse_maps(data)
            self._all = spans_for(self._maps, rs)
            self._reserved = [s for s in self._all
                              if s.mapping.perms[:3] == "---" and s.npages >= RESERVED_MIN_PAGES]
            self._key = key
            self._layout_key = None
        empty = self._empty_reserved()
        if empty != self._layout_key:
            spans, offset = [], 0
            for s in self._all:
                if s.mapping.start not in empty:
                    spans.append(Span(s.mapping, s.start, s.end, offset))
                    offset += s.npages
            self._layout = _Layout(spans, _groups(spans, self._maps))
            self._layout_key = empty
        return self._layout

    def mark_idle(self, ranges: Iterable[tuple[int, int]] | None = None) -> int:
        """Clear the accessed bit of every present page in ``ranges`` (default:
        all mappings), then flush the TLB.  Returns the pages marked."""
        # one TLB flush, at the last walk
        n, _ = self.dev.walk_many([(g.start, g.end, NO_BITMAPS) for g in self._plan(ranges).groups], clear=True)
        self.last_marked = n
        self.marked_at = time.monotonic()
        return n

    def read(self, ranges: Iterable[tuple[int, int]] | None = None, remark: bool = False) -> IdleMap:
        """Which pages are idle now.  With ``remark`` the same walk clears
        the accessed bits it tests (and the TLB is flushed): the next window
        starts at this read."""
        lay = self._plan(ranges)
        # every word of the walks' bitmaps is written (the module zeroes what
        # holds no page); re-marking: one TLB flush per read, at its last
        # walk (docs/kmod.md)
        p, i = self.dev.walk_many([(g.start, g.end, g.ptrs) for g in lay.groups], clear=remark)
        accessed = p - i
        # idle and present: fresh per read; huge and swapped: the layout's
        # read-only zeros unless a walk found one.  The rows wanted go
        # through one unpack and one set of copies (numpy's per-call cost,
        # which TCG slows ~14x, was a THP read's largest part).
        found = lay.bufs[2:].any(axis=1)
        want = [0, 1] + [2 + k for k in (0, 1) if found[k]]
        got = lay.pages(lay.bufs[:len(want)] if want[-1] == len(want) - 1 else lay.bufs[want])
        idle, present = got[0], got[1]
        huge = got[want.index(2)] if found[0] else lay.zeros
        swapped = got[want.index(3)] if found[1] else lay.zeros
        now = time.monotonic()
        window = now - self.marked_at if self.marked_at is not None else 0.0
        if remark:
            self.last_marked = accessed
            self.marked_at = now
        return IdleMap(self.proc.pid, lay.spans, present, idle, huge, swapped, now, window)


__all__ = ["KmodBitmap", "PAGE_SHIFT"]
