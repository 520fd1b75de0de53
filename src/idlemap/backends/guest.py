"""Any backend aimed at a VMM's guest RAM, answering in guest terms
(guest-physical addresses).  Where the guest RAM is comes from the vm package."""
from __future__ import annotations

from ..errors import UsageError, proc_errors
from ..kernel import smaps
from ..kernel.process import ProcessId, identify
from ..records import WssSample
from ..vm import GuestLayout, describe, find_guest_ram, guest_sample
from .base import Backend


class GuestBackend(Backend):
    """Any backend, aimed at a VMM's guest RAM and answering in guest terms.

    Backends that take ``ranges`` (page_idle) scan only guest RAM; others
    (clear_refs) measure the whole VMM and are cut down to its RAM mappings.
    A backend that cannot see accesses made through EPT/NPT is refused for
    a KVM guest instead of reporting it idle.
    """

    def __init__(self, inner_cls: type[Backend], proc: ProcessId, layout: GuestLayout, **kw):
        super().__init__(proc)
        if layout.accel == "kvm" and not inner_cls.caps.sees_guest_accesses:
            raise UsageError(f"the {inner_cls.name} backend cannot see a KVM guest's accesses (they go "
                             "through EPT/NPT page tables it does not age); use page_idle, see docs/vms.md")
        self.layout = layout
        self.name = inner_cls.name
        self.caps = inner_cls.caps
        opts = inner_cls.caps.options
        if "ranges" in opts:
            kw["ranges"] = layout.hva_ranges()
        self._own_pss = "with_pss" in opts
        if self._own_pss:
            kw["with_pss"] = False     # the VMM's whole-process PSS is not the guest's
        self.inner = inner_cls(proc, **kw)

    def mark(self) -> None:
        self.inner.mark()

    def sample(self, remark: bool = True) -> WssSample:
        s = self.inner.sample(remark=remark)
        return guest_sample(s, self.layout, self._pss() if self._own_pss else None)

    def _pss(self) -> int:
        """PSS of the VMM's guest RAM mappings (smaps has the mapcounts)."""
        ranges = self.layout.hva_ranges()
        with proc_errors(self.proc.pid, "smaps"):
            entries = smaps.read_smaps(self.proc.pid)
        return sum(e.get("Pss") for e in entries
                   if any(lo < e.mapping.end and e.mapping.start < hi for lo, hi in ranges))

    def close(self) -> None:
        self.inner.close()


def open_guest_backend(inner_cls: type[Backend], pid: int | ProcessId, qmp: str | None = None,
                       **kw) -> GuestBackend:
    """find_guest_ram + GuestBackend: what `wss --vm` and the exporter need."""
    proc = pid if isinstance(pid, ProcessId) else identify(pid)
    layout = find_guest_ram(describe(proc.pid), qmp)
    return GuestBackend(inner_cls, proc, layout, **kw)
