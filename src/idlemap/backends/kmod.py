"""kmod backend: exact, per page, VA-indexed, from idlemap's own kernel module.

Same interface and answers as the page_idle backend (a per-page IdleMap
per window), but read by /dev/idlemap (kmod/, docs/kmod.md): one walk of the
target's page tables per window (read and re-mark together), no pagemap,
no rmap, and a TLB flush after clearing accessed bits, so a hot page
cannot read idle behind a cached translation and no soft-dirty trick is
needed.  Works on kernels without CONFIG_IDLE_PAGE_TRACKING (Debian's own).

Cannot see: accesses by other processes sharing a frame, and KVM guests'
accesses through EPT/NPT (the module clears only the CPU's accessed bits;
the mmu-notifier young hooks are not exported to modules on 6.1).
"""
from __future__ import annotations

from ..kmodbitmap import KmodBitmap
from .base import Backend, Capabilities
from .page_idle import PageIdleBackend


class KmodBackend(PageIdleBackend):
    name = "kmod"
    caps = Capabilities(
        granularity="page", per_page=True, needs_root=True, sees_guest_accesses=False,
        summary="exact per-page idle bitmap from idlemap's kernel module (/dev/idlemap), TLB flushed",
        tlb_flush=False, flushes_tlb=True)

    def __init__(self, proc, ranges=None, tlb_flush: str = "none", with_pss: bool = True):
        # tlb_flush is accepted for the callers of page_idle; the module
        # always flushes after clearing (caps.flushes_tlb).
        Backend.__init__(self, proc)
        self.ranges = ranges
        self.with_pss = with_pss
        self.bitmap = KmodBitmap(proc)
