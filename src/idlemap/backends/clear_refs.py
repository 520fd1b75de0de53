"""clear_refs backend: exact referenced bytes per mapping, no per-page map.

Writing 1 to /proc/PID/clear_refs clears the accessed bit of every PTE and
PG_referenced of every page; the ``Referenced:`` lines of smaps then say
how many bytes each mapping touched since (Gregg's wss.pl).  Works on every
kernel with CONFIG_PROC_PAGE_MONITOR.  Side effect worth knowing: clearing
PG_referenced can make reclaim think the pages are colder than they are.
It does not see accesses a KVM guest makes through EPT/NPT (no MMU-notifier
aging, only the host PTEs).
"""
from __future__ import annotations

import time

from .. import tlb
from ..kernel import clear_refs as cr
from ..kernel import smaps
from ..kernel.process import check_same
from ..records import MappingUsage, WssSample
from .base import Backend, Capabilities


class ClearRefsBackend(Backend):
    name = "clear_refs"
    caps = Capabilities(
        granularity="mapping", per_page=False, needs_root=False, sees_guest_accesses=False,
        summary="exact referenced bytes per mapping (clear_refs + smaps), no per-page map",
        options=frozenset({"tlb_flush"}), requires=("clear_refs + smaps",), auto_rank=2)

    def __init__(self, proc, tlb_flush: str = "none"):
        super().__init__(proc)
        if tlb_flush not in ("none", "soft-dirty"):
            raise ValueError("tlb_flush must be 'none' or 'soft-dirty'")
        self.tlb_flush = tlb_flush
        self._marked_at: float | None = None

    def _clear(self) -> None:
        cr.clear_refs(self.proc.pid, cr.CLEAR_ALL)
        if self.tlb_flush == "soft-dirty":
            # clear_refs=1 clears the young bits without flushing the TLB;
            # only the soft-dirty clear ends in flush_tlb_mm() (docs/tlb.md).
            tlb.flush(self.proc.pid, self.proc.start_ticks)
        self._marked_at = time.monotonic()

    def mark(self) -> None:
        check_same(self.proc)
        self._clear()

    def sample(self, remark: bool = True) -> WssSample:
        if self._marked_at is None:
            self.mark()
        c0 = time.process_time()
        check_same(self.proc)
        entries = smaps.read_smaps(self.proc.pid)
        now = time.monotonic()
        window = now - self._marked_at
        if not entries:
            # A zombie (or a kernel thread) has no mm left: smaps reads empty.
            check_same(self.proc)
        if remark:
            self._clear()
        by_map = [MappingUsage(e.mapping, e.get("Rss"), e.get("Pss"), e.get("Referenced"),
                               max(0, e.get("Rss") - e.get("Referenced")), e.get("Swap"))
                  for e in entries]
        return WssSample(
            pid=self.proc.pid, backend=self.name, time_s=now, window_s=window,
            rss_bytes=sum(u.rss_bytes for u in by_map), pss_bytes=sum(u.pss_bytes for u in by_map),
            accessed_bytes=sum(u.accessed_bytes for u in by_map), by_mapping=by_map,
            scan_s=time.process_time() - c0)
