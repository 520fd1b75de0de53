"""damon backend: DAMON vaddr region access frequencies, with a kdamond of our own.

DAMON samples one page per region every ``sample_us`` and adapts its
regions (split/merge between ``min_nr_regions`` and ``max_nr_regions``) so
that pages of a region are accessed alike; each ``aggr_us`` it reports
every region's ``nr_accesses`` (samples that found the page accessed).
Cost is bounded by the region count, not by memory size; the price is
accuracy: a region is a guess about its pages.  docs/accuracy.md measures
how good the guess is against exact ground truth.

Results: on Linux 6.1 the per-region picture is only published through the
``damon:damon_aggregated`` tracepoint (tried_regions came in 6.2), which we
read from a private tracefs instance (kernel/damon_trace.py).  A page
counts as accessed in a window if a region covering it showed
``nr_accesses >= min_nr_accesses`` in an aggregation that ended inside the
window (at least half of it in the window) -- in any of them ("union", the
default) or in the median one ("median", DAMON's snapshot view); see
DamonSettings.estimator and docs/accuracy.md for what each gets wrong.
Intersected with the present pages from pagemap, that gives the same typed
records as the other backends (WssSample, by_mapping, an IdleMap
expansion), with granularity "region".

Ownership -- idlemap never modifies a kdamond it did not start:
 * if ``nr_kdamonds`` is not 0 when we start, every kdamond there belongs to
   someone else (the system's, damo's, another tool's): we say so in one
   sentence and stop, before writing anything;
 * two idlemaps are serialised by an abstract UNIX socket name (no file
   left behind, released by the kernel even on SIGKILL);
 * everything we create is undone on close(), at interpreter exit, on
   Ctrl-C and on SIGTERM/SIGHUP: our kdamond turned off, nr_kdamonds set
   back to 0, the tracefs instance removed (and tracefs unmounted if we
   mounted it).  Only SIGKILL can leave our kdamond behind; it stops by
   itself when its target exits, and the next idlemap refuses to touch it
   like any other.
"""
from __future__ import annotations

import time

from ...kernel import damon_sysfs as ds
from ...kernel.process import ProcessId
from ..base import Backend, Capabilities
from .session import DamonSession
from .settings import (ALTERNATIVE, DEFAULT_ATTRS, ESTIMATORS, DamonBusy, DamonBusyAndMissing, DamonFeatureMissing, DamonSample,
                       DamonSettings, RegionAccess, _refusal, unavailable)


class DamonBackend(Backend):
    name = "damon"
    caps = Capabilities(
        granularity="region", per_page=False, needs_root=True, sees_guest_accesses=True,
        summary="DAMON vaddr region access frequencies (own kdamond; cost bounded by the region count)",
        options=frozenset({"settings"}), requires=("DAMON sysfs", "DAMON vaddr"), probe=unavailable)

    def __init__(self, proc: ProcessId, settings: DamonSettings | None = None,
                 writer: ds.ControlWriter | None = None, root: str = ds.KDAMONDS):
        super().__init__(proc)
        self.settings = settings or DamonSettings()
        self.session = DamonSession([proc], self.settings, writer, root)
        self._t0: float | None = None
        self._cpu0 = 0.0
        self._kcpu0 = 0.0

    def start(self) -> None:
        self.session.start()

    def mark(self) -> None:
        self.session.start()
        self._t0 = self.session.mark()
        self._cpu0 = time.process_time()
        self._kcpu0 = self.session.kdamond_cpu_s()
        if self.settings.exact:
            self.session._exact_base = self.session.exact_bytes()

    def sample(self, remark: bool = True) -> DamonSample:
        if self._t0 is None:
            self.mark()
        t_req = time.monotonic()
        s = self.session.sample(0, self._t0, self._cpu0, self._kcpu0)
        if remark:
            # The next window starts where this one was asked to end; older
            # events can no longer fall in a window (cumulative windows, with
            # remark=False, keep theirs).
            self._t0 = t_req
            self.session.forget_before(t_req - 4 * self.settings.attrs.aggr_us / 1e6)
            self._cpu0 = time.process_time()
            self._kcpu0 = self.session.kdamond_cpu_s()
        return s

    def close(self) -> None:
        self.session.stop()


def damon_settings(sample_ms: float = 5, aggr_ms: float = 100, update_ms: float = 1000,
                   min_regions: int = DEFAULT_ATTRS.min_nr_regions,
                   max_regions: int = DEFAULT_ATTRS.max_nr_regions, **kw) -> DamonSettings:
    """Settings from milliseconds (the units people tune DAMON in)."""
    return DamonSettings(attrs=ds.MonitoringAttrs(int(sample_ms * 1000), int(aggr_ms * 1000),
                                                  int(update_ms * 1000), min_regions, max_regions), **kw)


__all__ = ["ALTERNATIVE", "DEFAULT_ATTRS", "ESTIMATORS", "DamonBackend", "DamonBusy", "DamonBusyAndMissing", "DamonFeatureMissing",
           "DamonSample", "DamonSession", "DamonSettings", "RegionAccess", "_refusal", "damon_settings",
           "unavailable"]
