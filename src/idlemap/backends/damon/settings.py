"""DAMON backend, the parts without a kdamond: settings, the records a
window gives, and why DAMON cannot be used here (read-only checks, never a
write under /sys/kernel/mm/damon)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import numpy as np

from ...errors import AccessDenied, FeatureMissing, IdlemapError, TryLater
from ...kernel import damon_sysfs as ds
from ...records import WssSample

LOCK_NAME = b"\0idlemap-damon"
ALTERNATIVE = "`--backend clear_refs` gives exact referenced bytes per mapping"


class DamonBusy(TryLater):
    """DAMON is in use by someone else; we stop before writing anything
    (75: try again when DAMON is free)."""


class DamonBusyAndMissing(DamonBusy):
    """Someone else's kdamond runs, and this kernel lacks DAMON vaddr as
    well: the sentence names both, but waiting cannot help, so it is
    EX_UNAVAILABLE like any missing feature."""

    exit_code = 69


class DamonFeatureMissing(FeatureMissing):
    """A DAMON capability that is not a single CONFIG_ option (a kernel version)."""

    def __init__(self, feature: str, sentence: str):
        self.feature = feature
        self.config = ""
        IdlemapError.__init__(self, sentence)


# Measured in the test VM (docs/accuracy.md): with DAMON's own default of
# 10 regions minimum, a window's union over-counted contiguous hot sets by
# tens of percent up to over 100%; 100 regions brought the medians to single
# digits or low tens of percent, for about twice the kdamond CPU.  So
# idlemap starts at 100.
DEFAULT_ATTRS = ds.MonitoringAttrs(min_nr_regions=100, max_nr_regions=1000)
ESTIMATORS = ("union", "median")


@dataclass(frozen=True)
class DamonSettings:
    """How our kdamond monitors, and how its reports become a working set."""
    attrs: ds.MonitoringAttrs = DEFAULT_ATTRS
    # A region counts as accessed in an aggregation with at least this many
    # of its samples accessed (1: "seen accessed at all").
    min_nr_accesses: int = 1
    # How a window's aggregations become one page set:
    #  "union":  pages in a region seen accessed in any aggregation of the
    #            window -- catches rarely used pages, but every region that
    #            straddles hot and cold pages adds its cold part;
    #  "median": the aggregation with the median accessed bytes -- DAMON's
    #            own one-snapshot view: close on steady working sets, blind
    #            to pages used less often than once per aggregation.
    estimator: str = "union"
    # Exact bytes per window from a DAMOS stat scheme with a "young" ops
    # filter (stats/sz_ops_filter_passed, 6.14+ files); apply interval in us
    # (None: the aggregation interval).
    exact: bool = False
    exact_interval_us: int | None = None
    # Intersect accessed regions with present pages (pagemap): bytes that
    # compare with RSS.  Without it: region bytes inside mappings only.
    resolve_pages: bool = True
    trace_buffer_kb: int = 2048

    def describe(self) -> str:
        a = self.attrs
        return (f"sample {a.sample_us / 1000:g} ms, aggregation {a.aggr_us / 1000:g} ms, "
                f"update {a.update_us / 1000:g} ms, regions {a.min_nr_regions}..{a.max_nr_regions}, "
                f"accessed if nr_accesses >= {self.min_nr_accesses}, {self.estimator} of the window")

    def as_dict(self) -> dict:
        a = self.attrs
        return {"sample_us": a.sample_us, "aggr_us": a.aggr_us, "update_us": a.update_us,
                "min_nr_regions": a.min_nr_regions, "max_nr_regions": a.max_nr_regions,
                "min_nr_accesses": self.min_nr_accesses, "estimator": self.estimator, "exact": self.exact}


@dataclass(frozen=True, slots=True)
class RegionAccess:
    """One DAMON region as last reported in a window."""
    pid: int
    start: int
    end: int
    nr_accesses: int       # samples that found it accessed in one aggregation
    age: int               # aggregations its access level has held
    max_nr_accesses: int   # aggr_us // sample_us

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class DamonSample(WssSample):
    """A WssSample plus what only DAMON knows."""
    regions: list[RegionAccess] = field(default_factory=list)  # the window's last aggregation
    # The accessed ranges behind accessed_bytes (the estimator's choice):
    # (n, 2) uint64 [start, end)
    accessed_ranges: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.uint64))
    # The same per aggregation (DAMON's own one-snapshot view), in time order
    aggregation_ranges: list[np.ndarray] = field(default_factory=list)
    region_accessed_bytes: int = 0     # accessed regions inside mappings (no pagemap)
    aggregations: int = 0              # aggregations that fell in the window
    lost_events: int = 0               # trace events the kernel dropped (whole session)
    kdamond_cpu_s: float = 0.0         # CPU time of our kdamond thread in the window
    exact_accessed_bytes: int = -1     # young-filter bytes (exact mode), -1 if not measured
    settings: DamonSettings | None = None



def _refusal(infos: list[ds.KdamondInfo], vaddr_note: str) -> str:
    running = [k for k in infos if k.state == "on"]
    if running:
        desc = ", ".join(f"kdamond {k.index} (PID {k.pid}{', ' + k.operations if k.operations else ''})"
                         for k in running)
        verb = "is" if len(running) == 1 else "are"
        return (f"DAMON is busy: {desc} {verb} running and idlemap did not start "
                f"{'it' if len(running) == 1 else 'them'}, so it will not touch DAMON "
                f"(nr_kdamonds cannot change while a kdamond runs){vaddr_note}")
    n = len(infos)
    return (f"DAMON already has {n} kdamond{'s' if n != 1 else ''} set up (not running) by someone "
            f"else, and idlemap never modifies kdamonds it did not start (if nobody needs "
            f"{'it' if n == 1 else 'them'}: echo 0 > {ds.KDAMONDS}/nr_kdamonds){vaddr_note}")


def _another_idlemap_holds_damon() -> bool:
    """True if another idlemap process holds the DAMON lock (the abstract
    socket every idlemap binds before its first DAMON write).  Touches
    nothing of DAMON's: a bind that succeeds is released at once."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(LOCK_NAME)
        return False
    except OSError:
        return True
    finally:
        probe.close()


def unavailable(features=None, root: str = ds.KDAMONDS, holding_lock: bool = False) -> IdlemapError | None:
    """Why the damon backend cannot run here, as the error to raise; None if it can.

    Reads only (sysfs, /proc/config.gz): safe on a machine whose kdamond
    belongs to the system.  A kdamond we did not start comes first: that
    is the one thing we must never touch, whatever else is missing.
    """
    if not ds.available(root):
        return FeatureMissing("DAMON sysfs interface", "CONFIG_DAMON_SYSFS", ALTERNATIVE)
    if os.geteuid() != 0:
        return AccessDenied("DAMON's sysfs files", "the damon backend needs root")
    if features is not None:
        vaddr = features.damon_vaddr
    else:
        from ...kernel.features import kernel_config
        cfg, _ = kernel_config()
        vaddr = cfg.get("CONFIG_DAMON_VADDR", "n") in ("y", "m") if cfg else None
    infos = ds.describe(root)
    if infos or ds.nr_kdamonds(root) != 0:
        if not holding_lock and _another_idlemap_holds_damon():
            # Not "someone else's": the kdamond is another idlemap's, which
            # stops it (and resets nr_kdamonds) when it is done.
            return DamonBusy("DAMON is busy: another idlemap process is using it right now (idlemap "
                             "runs one kdamond at a time); try again when that one is done")
        if vaddr is False:
            return DamonBusyAndMissing(_refusal(
                infos, "; this kernel also lacks DAMON vaddr (CONFIG_DAMON_VADDR is not set)"))
        return DamonBusy(_refusal(infos, ""))
    if vaddr is False:
        return FeatureMissing("DAMON virtual address monitoring", "CONFIG_DAMON_VADDR", ALTERNATIVE)
    return None
