"""page_idle backend: exact, per page, VA-indexed (the RFC's bitmap).

Needs CONFIG_IDLE_PAGE_TRACKING and root (frame numbers in pagemap need
CAP_SYS_ADMIN; the bitmap file is root-only).  page_idle ages pages through
the kernel's rmap walk, which calls the MMU notifiers' clear_young hook, so
KVM guests' accesses through EPT/NPT are seen too (mm/page_idle.c ->
folio_referenced-style walk -> ptep_clear_young_notify ->
mmu_notifier_clear_young -> kvm_mmu_notifier_clear_young).
"""
from __future__ import annotations

import time

import numpy as np

from ..analysis.usage import idle_map_usage
from ..bitmap import IdleBitmap
from ..kernel import smaps
from ..kernel.maps import PAGE_SHIFT
from ..records import WssSample
from .base import Backend, Capabilities


class PageIdleBackend(Backend):
    name = "page_idle"
    caps = Capabilities(
        granularity="page", per_page=True, needs_root=True, sees_guest_accesses=True,
        summary="exact per-page idle bitmap (pagemap + /sys/kernel/mm/page_idle/bitmap)",
        options=frozenset({"ranges", "with_pss", "tlb_flush"}),
        requires=("page_idle bitmap", "pagemap frame numbers"), auto_rank=1,
        auto_why="page_idle is available: exact per-page tracking")

    @classmethod
    def open_bitmap(cls, proc, tlb_flush: str = "none") -> IdleBitmap:
        return IdleBitmap(proc, tlb_flush=tlb_flush)

    def __init__(self, proc, ranges=None, tlb_flush: str = "none", with_pss: bool = True):
        super().__init__(proc)
        self.ranges = ranges
        self.with_pss = with_pss
        self.bitmap = IdleBitmap(proc, tlb_flush=tlb_flush)

    def mark(self) -> None:
        self.bitmap.mark_idle(self.ranges)

    def sample(self, remark: bool = True) -> WssSample:
        if self.bitmap.marked_at is None:
            self.mark()
        c0 = time.process_time()
        m = self.bitmap.read(self.ranges, remark=remark)
        cost = time.process_time() - c0
        by_map = idle_map_usage(m)
        rss = int(np.count_nonzero(m.present)) << PAGE_SHIFT
        pss = -1
        if self.with_pss:
            # PSS needs the kernel's per-page mapcount: smaps_rollup has it.
            pss = smaps.read_rollup(self.proc.pid).get("Pss", -1)
        return WssSample(pid=self.proc.pid, backend=self.name, time_s=m.time_s,
                         window_s=m.window_s, rss_bytes=rss, pss_bytes=pss,
                         accessed_bytes=int(np.count_nonzero(m.accessed)) << PAGE_SHIFT,
                         by_mapping=by_map, idle_map=m, scan_s=cost)

    def close(self) -> None:
        self.bitmap.close()
