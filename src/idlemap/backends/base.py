"""The interface every backend implements, and its declared capabilities.

A backend is described by data, not by its name: what it measures
(granularity), what it can see, the options its constructor takes, the
features of the machine it needs (names in requirements.FEATURES, the one
feature table) and its place in ``--backend auto``'s order.  Choosing a
backend, refusing one in one sentence, and `idlemap doctor` all read
these fields; nothing outside the table and this record branches on a
backend's name.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from ..kernel.process import ProcessId
from ..records import WssSample


@dataclass(frozen=True)
class Capabilities:
    granularity: str          # "page", "region" or "mapping"
    per_page: bool            # can produce an IdleMap (VA-indexed bitmap)
    needs_root: bool          # checked as the "root" feature after ``requires``
    sees_guest_accesses: bool  # accesses by a KVM guest through EPT/NPT
    summary: str              # one line for `doctor` and `--backend auto`
    # Constructor keywords beyond the process: "ranges" and "with_pss"
    # (per-page backends), "tlb_flush" (takes a user-space flush after its
    # mark, tlb.py), "settings" (the --damon-* options); system scanners:
    # "mark", "guests", "tlb_flush".
    options: frozenset[str] = frozenset()
    flushes_tlb: bool = False  # flushes the target's TLB itself after every mark (kmod)
    # Features of the machine it needs, in the order they are checked and
    # named in a refusal (requirements.FEATURES), before "root" if needs_root.
    requires: tuple[str, ...] = ()
    # Place in `--backend auto`'s order (lower first); None: only when asked for.
    auto_rank: int | None = None
    # What auto says when it picks this one first: "<name>, <why>".
    auto_why: str = ""
    # A check of state that is not a kernel feature, run before the table's
    # (DAMON: a kdamond someone else owns): the error to raise, or None.
    probe: Callable[[object], Exception | None] | None = None

    @property
    def tlb_flush(self) -> bool:
        """Takes tlb_flush="soft-dirty": flush the target's TLB after marking."""
        return "tlb_flush" in self.options

    @property
    def damon_settings(self) -> bool:
        """Takes settings= (the --damon-* options)."""
        return "settings" in self.options

    def needs(self) -> tuple[str, ...]:
        """Every feature it needs, in the order a refusal names them."""
        return self.requires + (("root",) if self.needs_root else ())


class Backend(abc.ABC):
    """One measurement window at a time: ``mark()`` starts a window (every
    page of the target is made "not accessed"), ``sample()`` ends it and
    says what was accessed since, then the next window starts at once."""

    name: str = ""
    caps: Capabilities

    def __init__(self, proc: ProcessId):
        self.proc = proc

    @classmethod
    def open_bitmap(cls, proc: ProcessId, tlb_flush: str = "none"):
        """A per-page backend's IdleBitmap-like object (mark_idle, read,
        mark_idle_mask, close) for the files of `idlemap mount` and
        `idlemap bitmap`; others have none."""
        raise NotImplementedError(f"the {cls.name} backend has no per-page bitmap")

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
