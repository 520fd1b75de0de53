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

import numpy as np

from .analysis.spans import spans_for
from .errors import NoSuchProcess, TargetExited
from .kernel import kmod
from .kernel.maps import PAGE_SHIFT, parse_maps, read_raw
from .kernel.process import ProcessId, check_same, identify
from .records import IdleMap, Span


def _bits(words: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), count=n, bitorder="little").view(np.bool_)


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

    def close(self) -> None:
        self.dev.close()

    def __enter__(self) -> "KmodBitmap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spans(self, ranges) -> list[Span]:
        try:
            data = read_raw(self.proc.pid)
        except TargetExited:
            raise
        except NoSuchProcess:
            # It was bound, so it existed: its /proc entry vanished because it
            # exited and was reaped between two reads.
            raise TargetExited(self.proc.pid) from None
        if not data:
            check_same(self.proc)       # a zombie has an empty map
        return spans_for(parse_maps(data), ranges)

    def mark_idle(self, ranges: Iterable[tuple[int, int]] | None = None) -> int:
        """Clear the accessed bit of every present page in ``ranges`` (default:
        all mappings), then flush the TLB.  Returns the pages marked."""
        n = 0
        for s in self._spans(ranges):
            p, _ = self.dev.walk(s.start, s.end, clear=True)
            n += p
        self.last_marked = n
        self.marked_at = time.monotonic()
        return n

    def read(self, ranges: Iterable[tuple[int, int]] | None = None, remark: bool = False) -> IdleMap:
        """Which pages are idle now.  With ``remark`` the same walk clears
        the accessed bits it tests (and the TLB is flushed): the next window
        starts at this read."""
        spans = self._spans(ranges)
        total = sum(s.npages for s in spans)
        present = np.zeros(total, np.bool_)
        idle = np.zeros(total, np.bool_)
        huge = np.zeros(total, np.bool_)
        swapped = np.zeros(total, np.bool_)
        accessed = 0
        for s in spans:
            n = s.npages
            words = (n + 63) // 64
            bufs = np.zeros((4, words), np.uint64)
            p, i = self.dev.walk(s.start, s.end, idle=bufs[0], present=bufs[1], huge=bufs[2],
                                 swapped=bufs[3], clear=remark)
            accessed += p - i
            sl = slice(s.offset, s.offset + n)
            for arr, words_k in zip((idle, present, huge, swapped), bufs):
                if words_k.any():           # huge and swapped are mostly empty: no unpack
                    arr[sl] = _bits(words_k, n)
        now = time.monotonic()
        window = now - self.marked_at if self.marked_at is not None else 0.0
        if remark:
            self.last_marked = accessed
            self.marked_at = now
        return IdleMap(self.proc.pid, spans, present, idle, huge, swapped, now, window)


__all__ = ["KmodBitmap", "PAGE_SHIFT"]
