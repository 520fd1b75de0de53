"""kmod backend: exact, per page, VA-indexed, from idlemap's own kernel module.

Same interface and answers as the page_idle backend (a per-page IdleMap
per window), but read by /dev/idlemap (kmod/, docs/kmod.md): one walk of the
target's page tables per window (read and re-mark together), no pagemap,
no rmap, and a TLB flush after clearing accessed bits, so a hot page
cannot read idle behind a cached translation and no soft-dirty trick is
needed.  Works on kernels without CONFIG_IDLE_PAGE_TRACKING (Debian's own).
First in `--backend auto`'s order when the module is loaded.

Cannot see: accesses by other processes sharing a frame, and KVM guests'
accesses through EPT/NPT (the module clears only the CPU's accessed bits;
the mmu-notifier young hooks are not exported to modules on 6.1): for a
KVM guest's VMM, auto keeps page_idle (``sees_guest_accesses=False``).
"""
from __future__ import annotations

import time

import numpy as np

from ..kernel.maps import PAGE_SHIFT
from ..kmodbitmap import KmodBitmap
from .base import Backend, Capabilities
from .page_idle import PageIdleBackend


class KmodBackend(PageIdleBackend):
    name = "kmod"
    caps = Capabilities(
        granularity="page", per_page=True, needs_root=True, sees_guest_accesses=False,
        summary="exact per-page idle bitmap from idlemap's kernel module (/dev/idlemap), TLB flushed",
        options=frozenset({"ranges", "with_pss"}), flushes_tlb=True,
        requires=("idlemap module", "idlemap module interface"), auto_rank=0,
        auto_why="the idlemap module is loaded: exact per-page tracking, TLB flushed in the kernel")

    def __init__(self, proc, ranges=None, with_pss: bool = True):
        Backend.__init__(self, proc)
        self.ranges = ranges
        self.with_pss = with_pss
        self.bitmap = KmodBitmap(proc)

    @classmethod
    def open_bitmap(cls, proc, tlb_flush: str = "none") -> KmodBitmap:
        # No tlb_flush: the module flushes after every clear (caps.flushes_tlb).
        return _FileBitmap(proc)


class _FileBitmap(KmodBitmap):
    """KmodBitmap plus what the FUSE ``idle_bitmap`` file writes: the RFC's
    pwrite, straight to the module (which marks a THP whole if any of its
    bits is set, as page_idle's one flag per THP behaves)."""

    def mark_idle_mask(self, lo: int, bits: np.ndarray, ranges) -> int:
        """Mark idle the pages of ``ranges`` whose bit is set; ``bits[i]``
        stands for the page at ``lo + i*PAGE_SIZE``.  Returns the bits set."""
        hi = lo + (bits.size << PAGE_SHIFT)
        done = 0
        for a, b in ranges:
            a, b = max(a, lo), min(b, hi)
            if a >= b:
                continue
            # Whole u64 words of the RFC layout: 64 pages each.
            wa = (a >> PAGE_SHIFT) & ~63
            wb = -(-(b >> PAGE_SHIFT) // 64) * 64
            sel = np.zeros(wb - wa, np.bool_)
            i0, i1 = (a - lo) >> PAGE_SHIFT, (b - lo) >> PAGE_SHIFT
            sel[(a >> PAGE_SHIFT) - wa:(b >> PAGE_SHIFT) - wa] = bits[i0:i1]
            if not sel.any():
                continue
            data = np.packbits(sel, bitorder="little").tobytes()
            pos, off = 0, wa // 8
            while pos < len(data):
                n = self.dev.pwrite(data[pos:], off + pos)
                if n <= 0:          # cannot happen: the module always advances
                    break
                pos += n
            done += int(np.count_nonzero(sel))
        self.marked_at = time.monotonic()
        return done
