"""DAMON's sysfs interface (/sys/kernel/mm/damon/admin): read, decode, write.

Thin and stateless like the rest of kernel/: this module knows the file
layout and the value formats; whether a kdamond may be touched is decided by
the backend (backends/damon/), never here.

Every write idlemap makes to a kernel control file -- DAMON sysfs and the
tracefs files of kernel/damon_trace.py -- goes through one
:class:`ControlWriter`, which can log each write, dry-run (record without
writing) or forbid writing altogether (the host tests use that as a second
safety net on a machine whose kdamond belongs to the system).

Layout (Documentation/admin-guide/mm/damon/usage.rst; 6.1 shown, later
kernels add files, never move these)::

    admin/kdamonds/nr_kdamonds
    admin/kdamonds/<K>/state            on | off; write on/off/commit/update_schemes_stats
    admin/kdamonds/<K>/pid              kdamond's PID while on, -1 otherwise
    admin/kdamonds/<K>/contexts/nr_contexts
    .../contexts/0/avail_operations     (6.1: vaddr fvaddr paddr, per config)
    .../contexts/0/operations
    .../contexts/0/monitoring_attrs/intervals/{sample_us,aggr_us,update_us}
    .../contexts/0/monitoring_attrs/nr_regions/{min,max}
    .../contexts/0/targets/nr_targets, targets/<T>/pid_target
    .../contexts/0/schemes/nr_schemes, schemes/<S>/{action,access_pattern/...,stats/...}
    6.14+: schemes/<S>/ops_filters/, stats/sz_ops_filter_passed, apply_interval_us
"""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

DAMON_ROOT = "/sys/kernel/mm/damon"
ADMIN = DAMON_ROOT + "/admin"
KDAMONDS = ADMIN + "/kdamonds"

# DAMON's sysfs takes its lock with mutex_trylock and returns EBUSY when
# another sysfs operation holds it (mm/damon/sysfs.c, 6.1): retry briefly.
_BUSY_RETRIES = 50
_BUSY_SLEEP_S = 0.01


class WritesForbidden(RuntimeError):
    """A write was attempted through a writer created with forbid=True."""


class ControlWriter:
    """The one place idlemap writes kernel control files.

    ``log`` receives one line per write (or mkdir/rmdir); ``dry_run``
    records writes in ``journal`` without performing them; ``forbid``
    raises :class:`WritesForbidden` instead (a guard for read-only runs).
    """

    def __init__(self, dry_run: bool = False, forbid: bool = False,
                 log: Callable[[str], None] | None = None):
        self.dry_run = dry_run
        self.forbid = forbid
        self.log = log
        self.journal: list[tuple[str, str, str]] = []     # (op, path, value)

    @classmethod
    def from_env(cls, log: Callable[[str], None] | None = None) -> "ControlWriter":
        """IDLEMAP_CONTROL_WRITES=forbid|dry-run|log changes the default writer."""
        mode = os.environ.get("IDLEMAP_CONTROL_WRITES", "")
        if mode == "log" and log is None:
            log = _stderr_log
        return cls(dry_run=mode == "dry-run", forbid=mode == "forbid", log=log)

    def _do(self, op: str, path: str, value: str, fn: Callable[[], None]) -> None:
        if self.forbid:
            raise WritesForbidden(f"refusing to {op} {path}: kernel control writes are forbidden here")
        self.journal.append((op, path, value))
        if self.log:
            self.log(f"{op} {path}" + (f" <- {value!r}" if op == "write" else ""))
        if not self.dry_run:
            fn()

    def write(self, path: str, value: object) -> None:
        text = str(value)

        def do() -> None:
            for i in range(_BUSY_RETRIES):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, text.encode())
                    finally:
                        os.close(fd)
                    return
                except OSError as e:
                    if e.errno != errno.EBUSY or i == _BUSY_RETRIES - 1:
                        raise
                    time.sleep(_BUSY_SLEEP_S)
        self._do("write", path, text, do)

    def mkdir(self, path: str) -> None:
        self._do("mkdir", path, "", lambda: os.mkdir(path))

    def rmdir(self, path: str) -> None:
        self._do("rmdir", path, "", lambda: os.rmdir(path))


def _stderr_log(line: str) -> None:
    import sys
    print(f"idlemap: {line}", file=sys.stderr, flush=True)


# -- reading ---------------------------------------------------------------

def read(path: str) -> str:
    """A sysfs value without its trailing newline (retries on EBUSY)."""
    for i in range(_BUSY_RETRIES):
        try:
            with open(path, "rb", buffering=0) as f:
                return f.read().decode().strip()
        except OSError as e:
            if e.errno != errno.EBUSY or i == _BUSY_RETRIES - 1:
                raise
            time.sleep(_BUSY_SLEEP_S)
    raise AssertionError("unreachable")


def read_int(path: str) -> int:
    return int(read(path))


def available(root: str = KDAMONDS) -> bool:
    """CONFIG_DAMON_SYSFS: the kdamonds directory exists."""
    return os.path.isfile(os.path.join(root, "nr_kdamonds"))


def nr_kdamonds(root: str = KDAMONDS) -> int:
    return read_int(os.path.join(root, "nr_kdamonds"))


@dataclass(frozen=True, slots=True)
class KdamondInfo:
    """What sysfs says about one kdamond directory (read-only view)."""
    index: int
    state: str             # "on" / "off" (or "" if unreadable)
    pid: int               # kdamond thread PID, -1 when off
    operations: str        # "vaddr", "paddr", ... ("" if no context)
    nr_targets: int
    target_pids: tuple[int, ...]


def kdamond_dir(index: int, root: str = KDAMONDS) -> str:
    return os.path.join(root, str(index))


def _try(fn, default):
    try:
        return fn()
    except (OSError, ValueError):
        return default


def describe(root: str = KDAMONDS) -> list[KdamondInfo]:
    """Every kdamond directory under ``root``: read-only, never raises for
    one unreadable file (the system's kdamond may be mid-change)."""
    out = []
    n = _try(lambda: nr_kdamonds(root), 0)
    for k in range(n):
        d = kdamond_dir(k, root)
        ctx = os.path.join(d, "contexts", "0")
        nt = _try(lambda: read_int(os.path.join(ctx, "targets", "nr_targets")), 0)
        pids = tuple(_try(lambda: read_int(os.path.join(ctx, "targets", str(t), "pid_target")), -1)
                     for t in range(nt))
        out.append(KdamondInfo(
            index=k, state=_try(lambda: read(os.path.join(d, "state")), ""),
            pid=_try(lambda: read_int(os.path.join(d, "pid")), -1),
            operations=_try(lambda: read(os.path.join(ctx, "operations")), ""),
            nr_targets=nt, target_pids=pids))
    return out


def snapshot(root: str = DAMON_ROOT) -> dict[str, bytes | None]:
    """Every file under ``root`` -> its bytes (None if it cannot be read).

    Read-only: for proving that nothing under /sys/kernel/mm/damon changed.
    Directories are listed too (value b"<dir>") so created or removed
    directories show up as differences.
    """
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out[dirpath] = b"<dir>"
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                with open(p, "rb", buffering=0) as f:
                    out[p] = f.read()
            except OSError:
                out[p] = None
    return out


# -- one kdamond's files, by name --------------------------------------------

@dataclass(frozen=True)
class MonitoringAttrs:
    """DAMON's monitoring attributes (sysfs defaults of 6.1 shown)."""
    sample_us: int = 5_000
    aggr_us: int = 100_000
    update_us: int = 1_000_000
    min_nr_regions: int = 10
    max_nr_regions: int = 1_000

    def validate(self) -> str | None:
        """None if DAMON would accept these, else why not (damon_set_attrs, 6.1)."""
        if self.sample_us <= 0 or self.aggr_us <= 0 or self.update_us <= 0:
            return "DAMON intervals must be positive"
        if self.aggr_us < self.sample_us:
            return "the aggregation interval must be at least the sampling interval"
        if self.min_nr_regions < 3:
            return "DAMON needs at least 3 regions (min_nr_regions >= 3)"
        if self.min_nr_regions > self.max_nr_regions:
            return "min_nr_regions must not exceed max_nr_regions"
        return None

    @property
    def max_nr_accesses(self) -> int:
        """The highest nr_accesses a region can reach in one aggregation."""
        return max(1, self.aggr_us // self.sample_us)


class KdamondFiles:
    """Paths of kdamond ``index``'s files; no I/O."""

    def __init__(self, index: int, root: str = KDAMONDS):
        self.dir = kdamond_dir(index, root)
        self.state = os.path.join(self.dir, "state")
        self.pid = os.path.join(self.dir, "pid")
        self.nr_contexts = os.path.join(self.dir, "contexts", "nr_contexts")
        self.ctx = os.path.join(self.dir, "contexts", "0")
        self.avail_operations = os.path.join(self.ctx, "avail_operations")
        self.operations = os.path.join(self.ctx, "operations")
        ma = os.path.join(self.ctx, "monitoring_attrs")
        self.sample_us = os.path.join(ma, "intervals", "sample_us")
        self.aggr_us = os.path.join(ma, "intervals", "aggr_us")
        self.update_us = os.path.join(ma, "intervals", "update_us")
        self.min_nr_regions = os.path.join(ma, "nr_regions", "min")
        self.max_nr_regions = os.path.join(ma, "nr_regions", "max")
        self.nr_targets = os.path.join(self.ctx, "targets", "nr_targets")
        self.nr_schemes = os.path.join(self.ctx, "schemes", "nr_schemes")

    def pid_target(self, t: int) -> str:
        return os.path.join(self.ctx, "targets", str(t), "pid_target")

    def scheme(self, s: int) -> str:
        return os.path.join(self.ctx, "schemes", str(s))


def configure(w: ControlWriter, f: KdamondFiles, operations: str, pids: list[int],
              attrs: MonitoringAttrs) -> None:
    """Write a one-context configuration into an existing, stopped kdamond dir."""
    w.write(f.nr_contexts, 1)
    w.write(f.operations, operations)
    w.write(f.sample_us, attrs.sample_us)
    w.write(f.aggr_us, attrs.aggr_us)
    w.write(f.update_us, attrs.update_us)
    # min before max would fail nothing in 6.1 (checked only at "on"), but
    # later kernels validate on write: raise max first when growing.
    w.write(f.max_nr_regions, attrs.max_nr_regions)
    w.write(f.min_nr_regions, attrs.min_nr_regions)
    w.write(f.nr_targets, len(pids))
    for i, pid in enumerate(pids):
        w.write(f.pid_target(i), pid)


# -- DAMOS "young" ops filter stats (exact bytes; 6.14+ files) ----------------

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


def has_exact_young_stats(f: KdamondFiles, scheme: int = 0) -> bool:
    """The files the exact-bytes mode needs exist under a created scheme."""
    s = f.scheme(scheme)
    return (os.path.isdir(os.path.join(s, "ops_filters"))
            and os.path.isfile(os.path.join(s, "stats", "sz_ops_filter_passed")))


def configure_young_stat_scheme(w: ControlWriter, f: KdamondFiles, apply_interval_us: int) -> None:
    """One ``stat`` scheme over every region, passing only young pages.

    Each application walks the regions' pages, counts the bytes of pages
    accessed since the previous check into ``sz_ops_filter_passed`` and
    clears their accessed bits (mm/damon/vaddr.c damos_va_stat; the
    files exist from 6.14, vaddr counts them in later kernels).
    """
    w.write(f.nr_schemes, 1)
    s = f.scheme(0)
    w.write(os.path.join(s, "action"), "stat")
    ap = os.path.join(s, "access_pattern")
    for name, lo, hi in (("sz", 0, U64_MAX), ("nr_accesses", 0, U32_MAX), ("age", 0, U32_MAX)):
        w.write(os.path.join(ap, name, "max"), hi)
        w.write(os.path.join(ap, name, "min"), lo)
    ai = os.path.join(s, "apply_interval_us")
    if os.path.exists(ai):
        w.write(ai, apply_interval_us)
    flt = os.path.join(s, "ops_filters")
    w.write(os.path.join(flt, "nr_filters"), 1)
    w.write(os.path.join(flt, "0", "type"), "young")
    w.write(os.path.join(flt, "0", "matching"), "Y")
    w.write(os.path.join(flt, "0", "allow"), "Y")


@dataclass(frozen=True, slots=True)
class SchemeStats:
    nr_tried: int
    sz_tried: int
    nr_applied: int
    sz_applied: int
    sz_ops_filter_passed: int      # -1 where the kernel has no such file
    qt_exceeds: int


def read_scheme_stats(f: KdamondFiles, scheme: int = 0) -> SchemeStats:
    d = os.path.join(f.scheme(scheme), "stats")

    def get(name: str) -> int:
        p = os.path.join(d, name)
        return read_int(p) if os.path.exists(p) else -1
    return SchemeStats(get("nr_tried"), get("sz_tried"), get("nr_applied"), get("sz_applied"),
                       get("sz_ops_filter_passed"), get("qt_exceeds"))
