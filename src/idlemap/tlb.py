"""Which TLB flush a command uses, and whether its readings can be trusted.

Marking a page idle clears its accessed bits without flushing the TLB
(page_idle, clear_refs=1 and DAMON alike): a page used through a
translation cached before the mark sets no accessed bit and reads idle
although it is hot.  docs/tlb.md measures it: up to 99% of a hot loop's
pages read idle.  From user space on Linux 6.1 the one dependable flush of
another process's TLB is ``clear_refs`` 4 (soft-dirty): it ends in
``flush_tlb_mm()``.  Its costs: on a kernel with CONFIG_MEM_SOFT_DIRTY
every PTE is write-protected (one minor fault per page written after each
flush) and the target's soft-dirty bits are cleared, which breaks another
tool tracking them (CRIU's incremental dumps).

So: ``auto`` (every command's default) flushes with soft-dirty unless the
target's soft-dirty bits are in use by someone else; then a measurement
goes on unflushed and says so, and an action (reclaim, tier) refuses.  An
action never runs unflushed unless the user says ``--unsafe-no-tlb-flush``.

This module decides; the kernel layer (kernel/clear_refs.py) does the write
and the backends do it after each mark.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import IdlemapError, TryLater, UsageError
from .kernel import clear_refs as cr
from .kernel.process import ProcessId

MODES = ("auto", "soft-dirty", "none")
DOC = "docs/tlb.md"

# Processes whose soft-dirty bits idlemap itself cleared, so a later run
# does not take its own clears for another tool's (one empty file each,
# named PID-STARTTICKS: a reused PID is a different name).
OWN_CLEARS = Path(os.environ.get("IDLEMAP_RUN_DIR", "/run/idlemap")) / "soft-dirty"


class SoftDirtyInUse(TryLater):
    """An action needs a flushed reading, and the only flush would clear
    another tool's soft-dirty bits."""

    # TryLater (75): possible again once that tool is done

    def __init__(self, proc: ProcessId):
        super().__init__(
            f"PID {proc.pid} ({proc.comm}) has soft-dirty bits cleared by another tool (CRIU?), and the "
            "only TLB flush available from user space would clear them again; pass --tlb-flush soft-dirty "
            "to flush anyway, or --unsafe-no-tlb-flush to act on readings the TLB may have hidden")


@dataclass(frozen=True, slots=True)
class TlbPolicy:
    requested: str      # what the user asked for: auto, soft-dirty, none
    flush: str          # what the backend does after each mark: "soft-dirty" or "none"
    exact: bool         # False: a hot page cached in the TLB may read idle
    note: str = ""      # one sentence for the output when not exact

    def as_dict(self) -> dict:
        return {"tlb_flush": self.flush, "tlb_exact": self.exact}


_sd_kernel: bool | None = None


def kernel_has_soft_dirty() -> bool:
    """CONFIG_MEM_SOFT_DIRTY, found by looking: a page we just wrote reads
    soft-dirty in our own pagemap only if the kernel tracks the bit (no
    /proc/config.gz needed)."""
    global _sd_kernel
    if _sd_kernel is None:
        from .kernel import pagemap as pm
        entry = pm.own_page_entry()
        # Cannot tell (no pagemap): assume the costly case.
        _sd_kernel = True if entry is None else bool(entry & int(pm.SOFT_DIRTY))
    return _sd_kernel


def _own_mark(pid: int, start_ticks: int) -> Path:
    return OWN_CLEARS / f"{pid}-{start_ticks}"


_noted: set[tuple[int, int]] = set()


def flush(pid: int, start_ticks: int) -> None:
    """Flush the TLB of process (pid, start_ticks) on every CPU:
    ``clear_refs`` 4 ends in ``flush_tlb_mm()`` (fs/proc/task_mmu.c, 6.1;
    the soft-dirty clear before it is what costs the minor faults).

    The first flush of a process leaves a note that the soft-dirty bits
    were cleared by idlemap (best effort: without a writable run directory
    a later run takes them for another tool's and stays careful)."""
    if (pid, start_ticks) not in _noted:
        try:
            OWN_CLEARS.mkdir(parents=True, exist_ok=True)
            _own_mark(pid, start_ticks).touch()
        except OSError:
            pass
        _noted.add((pid, start_ticks))
    cr.clear_refs(pid, cr.CLEAR_SOFT_DIRTY)


def soft_dirty_in_use(proc: ProcessId) -> bool:
    """True if someone other than idlemap cleared the target's soft-dirty bits.

    Every new mapping starts soft-dirty (VM_SOFTDIRTY: "sd" in smaps'
    VmFlags) and only ``clear_refs`` 4 takes that flag away (the stack
    aside, below), so a mapping without "sd" means a soft-dirty tracker
    (or an earlier idlemap, which leaves a note in OWN_CLEARS) has been at
    work.  One smaps read.
    """
    if not kernel_has_soft_dirty():
        return False            # no bits to break, and the flush costs no faults
    if _own_mark(proc.pid, proc.start_ticks).exists():
        return False
    from .kernel.maps import trackable
    from .kernel.smaps import read_smaps
    try:
        entries = read_smaps(proc.pid)
    except IdlemapError:
        return False            # gone or unreadable: the caller's own reads say so
    # The stack is left out: exec's setup_arg_pages() re-sets its flags
    # without VM_SOFTDIRTY (seen on 6.1: "[stack]" lacks "sd" in a process
    # nobody touched), and any tracker's clear takes "sd" off every mapping.
    return any("sd" not in e.vm_flags for e in entries
               if trackable(e.mapping) and e.mapping.kind != "stack" and e.vm_flags)


def resolve(proc: ProcessId | None, requested: str, *, can_flush: bool, acting: bool = False,
            unsafe: bool = False, what: str = "backend", flushes_itself: bool = False) -> TlbPolicy:
    """The flush a command uses on ``proc``.

    ``can_flush``: the backend flushes after its mark (page_idle,
    clear_refs); DAMON cannot (it would have to flush every sampling
    interval).  ``acting``: the readings decide what is paged out or moved.
    ``unsafe``: the user passed --unsafe-no-tlb-flush.  ``flushes_itself``:
    the backend clears accessed bits and flushes the TLB in one kernel walk
    (idlemap's module): exact whatever was asked, with no soft-dirty cost.
    """
    if requested not in MODES:
        raise UsageError(f"--tlb-flush must be one of {', '.join(MODES)}")
    if flushes_itself:
        return TlbPolicy(requested, "kmod", True)
    if unsafe:
        return TlbPolicy(requested, "none", False,
                         "warning: --unsafe-no-tlb-flush: hot pages cached in the TLB can read idle and be "
                         f"acted on ({DOC})")
    if acting and requested == "none":
        raise UsageError("actions need a flushed reading: --tlb-flush none would let hot pages cached in the "
                         "TLB read idle and be paged out or moved; pass --unsafe-no-tlb-flush to do it anyway")
    if not can_flush:
        if acting:
            raise UsageError(f"the {what} cannot flush the TLB, so its readings cannot decide an action")
        return TlbPolicy(requested, "none", False,
                         f"the {what} cannot flush the TLB: hot pages cached there may read idle ({DOC})")
    if requested == "none":
        return TlbPolicy(requested, "none", False,
                         f"TLB not flushed (--tlb-flush none): hot pages cached there may read idle ({DOC})")
    if requested == "auto" and proc is not None and soft_dirty_in_use(proc):
        if acting:
            raise SoftDirtyInUse(proc)
        return TlbPolicy(requested, "none", False,
                         f"TLB not flushed: PID {proc.pid}'s soft-dirty bits are in use by another tool "
                         f"(--tlb-flush soft-dirty flushes anyway); hot pages cached there may read idle ({DOC})")
    return TlbPolicy(requested, "soft-dirty", True)


def resolve_for(proc: ProcessId | None, requested: str, backend_cls, *, acting: bool = False,
                unsafe: bool = False) -> TlbPolicy:
    """:func:`resolve` for a backend class, from its declared capabilities
    (whether it takes a flush after its mark, or flushes in its own walk)."""
    caps = backend_cls.caps
    return resolve(proc, requested, can_flush=caps.tlb_flush, acting=acting, unsafe=unsafe,
                   what=f"{backend_cls.name} backend", flushes_itself=caps.flushes_tlb)
