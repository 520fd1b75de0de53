"""The interface every backend implements, and its declared capabilities."""
from __future__ import annotations

import abc
from dataclasses import dataclass

from ..kernel.process import ProcessId
from ..records import WssSample


@dataclass(frozen=True)
class Capabilities:
    granularity: str          # "page", "region" or "mapping"
    per_page: bool            # can produce an IdleMap (VA-indexed bitmap)
    needs_root: bool
    sees_guest_accesses: bool  # accesses by a KVM guest through EPT/NPT
    summary: str              # one line for `doctor` and `--backend auto`
    tlb_flush: bool = False   # takes tlb_flush="soft-dirty": flush the target's TLB after marking
    flushes_tlb: bool = False  # flushes the target's TLB itself after every mark (kmod)
    damon_settings: bool = False  # takes settings= (the --damon-* options)


class Backend(abc.ABC):
    """One measurement window at a time: ``mark()`` starts a window (every
    page of the target is made "not accessed"), ``sample()`` ends it and
    says what was accessed since, then the next window starts at once."""

    name: str = ""
    caps: Capabilities

    def __init__(self, proc: ProcessId):
        self.proc = proc

    @abc.abstractmethod
    def mark(self) -> None: ...

    @abc.abstractmethod
    def sample(self, remark: bool = True) -> WssSample:
        """End the window; with ``remark`` start the next one right away."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
