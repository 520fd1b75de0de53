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

import atexit
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..analysis.regions import batch_starts, bytes_within, covered_pages, merge_intervals
from ..analysis.spans import spans_for
from ..analysis.usage import idle_map_usage
from ..errors import AccessDenied, FeatureMissing, IdlemapError, TargetExited, UsageError
from ..kernel import damon_sysfs as ds
from ..kernel import damon_trace as dt
from ..kernel import pagemap as pm
from ..kernel import smaps
from ..kernel.maps import PAGE_SHIFT, read_maps
from ..kernel.process import ProcessId, check_same
from ..records import IdleMap, MappingUsage, WssSample
from .base import Backend, Capabilities

LOCK_NAME = b"\0idlemap-damon"
ALTERNATIVE = "`--backend clear_refs` gives exact referenced bytes per mapping"


class DamonBusy(IdlemapError):
    """DAMON is in use by someone else; we stop before writing anything."""

    exit_code = 75          # EX_TEMPFAIL: try again when DAMON is free


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


# -- the session: one kdamond of our own ---------------------------------------

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
        from ..kernel.features import kernel_config
        cfg, _ = kernel_config()
        vaddr = cfg.get("CONFIG_DAMON_VADDR", "n") in ("y", "m") if cfg else None
    infos = ds.describe(root)
    if infos or ds.nr_kdamonds(root) != 0:
        if not holding_lock and _another_idlemap_holds_damon():
            # Not "someone else's": the kdamond is another idlemap's, which
            # stops it (and resets nr_kdamonds) when it is done.
            return DamonBusy("DAMON is busy: another idlemap process is using it right now (idlemap "
                             "runs one kdamond at a time); try again when that one is done")
        note = ("; this kernel also lacks DAMON vaddr (CONFIG_DAMON_VADDR is not set)"
                if vaddr is False else "")
        return DamonBusy(_refusal(infos, note))
    if vaddr is False:
        return FeatureMissing("DAMON virtual address monitoring", "CONFIG_DAMON_VADDR", ALTERNATIVE)
    return None


class DamonSession:
    """Our own kdamond monitoring ``procs`` (DAMON vaddr), and its reports.

    >>> with DamonSession([identify(pid)]) as s:
    ...     t0 = s.mark()
    ...     time.sleep(1)
    ...     sample = s.sample(0, t0)
    """

    def __init__(self, procs: list[ProcessId], settings: DamonSettings | None = None,
                 writer: ds.ControlWriter | None = None, root: str = ds.KDAMONDS,
                 handle_signals: bool = True):
        if not procs:
            raise UsageError("DAMON needs at least one target process")
        self.procs = list(procs)
        self.settings = settings or DamonSettings()
        why = self.settings.attrs.validate()
        if why:
            raise UsageError(why)
        if self.settings.min_nr_accesses < 1:
            raise UsageError("min_nr_accesses must be at least 1")
        if self.settings.estimator not in ESTIMATORS:
            raise UsageError(f"the DAMON estimator must be one of {', '.join(ESTIMATORS)}")
        self.w = writer or ds.ControlWriter.from_env()
        self.root = root
        self.files = ds.KdamondFiles(0, root)
        self.handle_signals = handle_signals
        self.started = False
        self._created_kdamond = False
        self._mounted_tracefs: str | None = None
        self._trace: dt.TraceInstance | None = None
        self._lock_sock: socket.socket | None = None
        self._old_handlers: dict[int, object] = {}
        self._atexit = False
        self.kdamond_pid = -1
        # event store, filled by the pump thread
        self._mutex = threading.Lock()
        self._parser = dt.EventParser()
        self._chunks: list[dt.Events] = []
        self.lost_events = 0
        self._pump_stop = threading.Event()
        self._pump: threading.Thread | None = None
        self._exact_base = 0

    # -- start ---------------------------------------------------------------
    def start(self) -> None:
        if self.started:
            return
        self._preflight()          # reads only; raises before any write
        try:
            # SIGINT/SIGTERM/SIGHUP are held back while we build, so a
            # signal lands either before the first write or after the last;
            # wherever it lands, stop() undoes what exists.
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
            try:
                self._install_cleanup()
                self._setup()
                self.started = True
                # Started with the signals blocked, the reader thread keeps
                # them blocked: they go to the main thread.
                self._pump_stop.clear()
                self._pump = threading.Thread(target=self._pump_loop, name="idlemap-damon-trace",
                                              daemon=True)
                self._pump.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        except BaseException:
            self.stop()
            raise

    def _preflight(self) -> None:
        # Reads only: raises before anything is written.
        err = unavailable(root=self.root)
        if err is not None:
            raise err
        for p in self.procs:
            check_same(p)
        # Serialise idlemaps: between our check above and our first write
        # another idlemap must not do the same.
        self._lock_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._lock_sock.bind(LOCK_NAME)
        except OSError:
            self._lock_sock.close()
            self._lock_sock = None
            raise DamonBusy("another idlemap process is using DAMON right now; "
                            "idlemap runs one kdamond at a time") from None
        err = unavailable(root=self.root, holding_lock=True)    # changed under us?
        if err is not None:
            self._release_lock()
            raise err

    def _setup(self) -> None:
        st = self.settings
        tracefs = dt.find_tracefs()
        if tracefs is None:
            where = dt.TRACEFS_CANDIDATES[0]
            if os.path.isdir(where):
                if self.w.forbid:
                    raise ds.WritesForbidden("tracefs is not mounted and writes are forbidden")
                if not self.w.dry_run:
                    dt.mount_tracefs(where)
                self._mounted_tracefs = where
                tracefs = where
        if tracefs is None or not dt.has_event(tracefs):
            raise FeatureMissing("DAMON tracepoint damon:damon_aggregated (or tracefs)",
                                 "CONFIG_TRACING", "idlemap reads DAMON's regions from it on Linux 6.1; "
                                 + ALTERNATIVE)
        for stale in dt.stale_instances(tracefs):
            # Left by an idlemap killed with SIGKILL: ours by name, nobody reads it.
            try:
                self.w.rmdir(stale)
            except OSError:
                pass

        f = self.files
        self.w.write(os.path.join(self.root, "nr_kdamonds"), 1)
        self._created_kdamond = True
        ds.configure(self.w, f, "vaddr", [p.pid for p in self.procs], st.attrs)
        if not self.w.dry_run:
            ops = ds.read(f.avail_operations).split() if os.path.exists(f.avail_operations) else ["vaddr"]
            if "vaddr" not in ops:
                raise FeatureMissing("DAMON virtual address monitoring", "CONFIG_DAMON_VADDR", ALTERNATIVE)
        if st.exact:
            self.w.write(f.nr_schemes, 1)
            if not self.w.dry_run and not ds.has_exact_young_stats(f):
                raise DamonFeatureMissing(
                    "DAMOS young ops filter",
                    f"this kernel ({os.uname().release}) has no DAMOS ops filters with "
                    "stats/sz_ops_filter_passed (they came in Linux 6.14), so DAMON cannot count "
                    "exact accessed bytes here; drop --exact for region estimates")
            ds.configure_young_stat_scheme(self.w, f, st.exact_interval_us or st.attrs.aggr_us)
        self._trace = dt.TraceInstance(tracefs, self.w, st.trace_buffer_kb)
        self._trace.create()
        try:
            self.w.write(f.state, "on")
        except OSError as e:
            import errno as _e
            for p in self.procs:
                check_same(p)
            if e.errno == _e.EBUSY:
                raise DamonBusy("DAMON refused to start our kdamond because another DAMON user "
                                "runs exclusively (a kernel module such as DAMON_RECLAIM)") from None
            raise IdlemapError(f"DAMON refused to start monitoring ({os.strerror(e.errno)})") from None
        if not self.w.dry_run:
            self.kdamond_pid = ds.read_int(f.pid)

    # -- stop ----------------------------------------------------------------
    def stop(self) -> None:
        """Undo everything start() did; safe to call more than once."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
        try:
            self._pump_stop.set()
            if self._pump is not None and self._pump is not threading.current_thread():
                self._pump.join(timeout=5)
            self._pump = None
            self._teardown()
        finally:
            self.started = False
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _teardown(self) -> None:
        errors: list[BaseException] = []
        f = self.files
        if self._created_kdamond:
            try:
                if self.w.dry_run or ds.read(f.state) == "on":
                    self.w.write(f.state, "off")
            except OSError as e:
                # EINVAL/EPERM: the kdamond already stopped by itself (its
                # targets exited); nr_kdamonds can be reset anyway.
                if ds.read(f.state) == "on":
                    errors.append(e)
            try:
                self.w.write(os.path.join(self.root, "nr_kdamonds"), 0)
                self._created_kdamond = False
            except OSError as e:
                errors.append(e)
        if self._trace is not None:
            try:
                self._trace.destroy()
                self._trace = None
            except OSError as e:
                errors.append(e)
        if self._mounted_tracefs:
            try:
                if not self.w.dry_run:
                    dt.umount(self._mounted_tracefs)
                self._mounted_tracefs = None
            except OSError as e:
                errors.append(e)
        self._release_lock()
        self._restore_signals()
        if errors:
            raise IdlemapError(f"could not undo all DAMON changes ({errors[0]}); "
                               f"check {ds.KDAMONDS}/nr_kdamonds")

    def _release_lock(self) -> None:
        if self._lock_sock is not None:
            self._lock_sock.close()
            self._lock_sock = None

    # -- signals: SIGTERM/SIGHUP clean up like Ctrl-C ---------------------------
    def _install_cleanup(self) -> None:
        if not self._atexit:
            atexit.register(self._atexit_stop)
            self._atexit = True
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)

    def _restore_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)
            self._old_handlers.clear()

    def _atexit_stop(self) -> None:
        try:
            self.stop()
        except Exception:
            pass

    def __enter__(self) -> "DamonSession":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- events ----------------------------------------------------------------
    def _pump_loop(self) -> None:
        while not self._pump_stop.wait(0.05):
            try:
                self.pump()
            except OSError:
                return

    def pump(self) -> None:
        """Move what the trace pipe holds into the event store."""
        if self._trace is None:
            return
        with self._mutex:
            ev = self._parser.feed(self._trace.read_raw())
            self.lost_events += ev.lost
            if len(ev):
                self._chunks.append(ev)

    _FIELDS = ("time_s", "target", "nr_regions", "start", "end", "nr_accesses", "age")

    def _concat_locked(self) -> dt.Events:
        """All stored events as one Events (caller holds the mutex)."""
        if len(self._chunks) > 1:
            c = self._chunks
            self._chunks = [dt.Events(*(np.concatenate([getattr(x, n) for x in c]) for n in self._FIELDS))]
        return self._chunks[0] if self._chunks else dt.parse_events(b"")

    def _events(self) -> dt.Events:
        with self._mutex:
            return self._concat_locked()

    def forget_before(self, t: float) -> None:
        """Drop events older than t (they can no longer fall in a window)."""
        with self._mutex:            # the reader thread appends meanwhile
            ev = self._concat_locked()
            keep = ev.time_s >= t
            if self._chunks and not keep.all():
                self._chunks = [dt.Events(*(getattr(ev, n)[keep] for n in self._FIELDS))]

    def _batches(self, ev: dt.Events) -> tuple[np.ndarray, np.ndarray, bool]:
        """(batch start indices, batch end times, last batch complete?)."""
        aggr_s = self.settings.attrs.aggr_us / 1e6
        idx = batch_starts(ev.target, ev.start, ev.time_s, gap_s=aggr_s / 2)
        if idx.size == 0:
            return idx, np.empty(0), False
        ends = np.maximum.reduceat(ev.time_s, idx)
        last = slice(int(idx[-1]), len(ev))
        tg = ev.target[last]
        complete = all(int(np.count_nonzero(tg == t)) == int(ev.nr_regions[last][tg == t][0])
                       for t in np.unique(tg)) and np.unique(tg).size == len(self.procs)
        return idx, ends, complete

    def wait_for_aggregation(self, after: float, timeout_s: float | None = None) -> bool:
        """Wait until an aggregation that ended at or after ``after`` is complete."""
        aggr_s = self.settings.attrs.aggr_us / 1e6
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 3 * aggr_s + 5.0)
        while True:
            self.pump()
            idx, ends, complete = self._batches(self._events())
            done = ends[:-1] if not complete else ends
            if done.size and done[-1] >= after:
                return True
            if time.monotonic() >= deadline:
                return False
            if not self._kdamond_alive():
                return False
            time.sleep(min(0.02, aggr_s / 4))

    def _kdamond_alive(self) -> bool:
        try:
            return ds.read(self.files.state) == "on"
        except OSError:
            return False

    def kdamond_cpu_s(self) -> float:
        """utime + stime of our kdamond thread, seconds (0 if unknown)."""
        return _thread_cpu_s(f"/proc/{self.kdamond_pid}/stat") if self.kdamond_pid > 0 else 0.0

    def reader_cpu_s(self) -> float:
        """CPU time of our trace-reading thread, seconds (0 if not running)."""
        tid = getattr(self._pump, "native_id", None)
        return _thread_cpu_s(f"/proc/self/task/{tid}/stat") if tid else 0.0

    def exact_bytes(self) -> int:
        """Cumulative sz_ops_filter_passed of the young-filter scheme."""
        self.w.write(self.files.state, "update_schemes_stats")
        return ds.read_scheme_stats(self.files).sz_ops_filter_passed

    def mark(self) -> float:
        """Start a window now; returns its start (CLOCK_MONOTONIC)."""
        t0 = time.monotonic()
        self.forget_before(t0 - 4 * self.settings.attrs.aggr_us / 1e6)
        return t0

    # -- a window's result ---------------------------------------------------------
    def window(self, target: int, t0: float) -> tuple[np.ndarray, np.ndarray, list[RegionAccess],
                                                      list[np.ndarray]]:
        """Accessed intervals of ``target`` in aggregations that ended after
        t0 (at least half inside the window): (starts, ends) merged, the
        regions of the last aggregation, and each aggregation's accessed
        ranges ((n, 2) arrays, in time order)."""
        a = self.settings.attrs
        ev = self._events()
        idx, ends, complete = self._batches(ev)
        nb = idx.size if complete else idx.size - 1
        sel = np.nonzero(ends[:nb] > t0 + a.aggr_us / 2e6)[0]
        if sel.size == 0:
            return np.empty(0, np.uint64), np.empty(0, np.uint64), [], []
        lo = int(idx[sel[0]])
        hi = int(idx[nb]) if nb < idx.size else len(ev)
        m = slice(lo, hi)
        tg = ev.target[m] == target
        hot = tg & (ev.nr_accesses[m] >= self.settings.min_nr_accesses)
        starts, ends_ = merge_intervals(ev.start[m][hot], ev.end[m][hot])
        per_agg = []
        for b in sel:
            bm = slice(int(idx[b]), int(idx[b + 1]) if b + 1 < idx.size else len(ev))
            h = (ev.target[bm] == target) & (ev.nr_accesses[bm] >= self.settings.min_nr_accesses)
            per_agg.append(np.stack([ev.start[bm][h], ev.end[bm][h]], axis=1).astype(np.uint64))
        last_lo = int(idx[sel[-1]])
        lm = slice(last_lo, hi)
        ltg = ev.target[lm] == target
        pid = self.procs[target].pid
        regions = [RegionAccess(pid, int(s), int(e), int(n), int(g), a.max_nr_accesses)
                   for s, e, n, g in zip(ev.start[lm][ltg], ev.end[lm][ltg],
                                         ev.nr_accesses[lm][ltg], ev.age[lm][ltg])]
        return starts, ends_, regions, per_agg

    def sample(self, target: int, t0: float, cpu0: float | None = None,
               kcpu0: float | None = None) -> DamonSample:
        """The working set of target ``target`` since t0."""
        proc = self.procs[target]
        t_req = time.monotonic()
        ok = self.wait_for_aggregation(t_req)
        check_same(proc)
        if not ok and not self._kdamond_alive():
            # vaddr kdamonds stop when every target has exited.
            raise TargetExited(proc.pid)
        starts, ends, regions, per_agg = self.window(target, t0)
        now = time.monotonic()
        maps = read_maps(proc.pid)
        spans = spans_for(maps, None)
        st = self.settings
        if st.estimator == "median" and per_agg:
            # The aggregation whose accessed bytes (inside mappings) is the median.
            sizes = [bytes_within(spans, *merge_intervals(r[:, 0], r[:, 1])) for r in per_agg]
            pick = per_agg[int(np.argsort(sizes, kind="stable")[(len(sizes) - 1) // 2])]
            starts, ends = merge_intervals(pick[:, 0], pick[:, 1])
        region_bytes = bytes_within(spans, starts, ends)
        idle_map = None
        if st.resolve_pages:
            total = spans[-1].offset + spans[-1].npages if spans else 0
            entries = np.empty(total, dtype=np.uint64)
            with pm.Pagemap(proc.pid) as pmap:
                for s in spans:
                    pmap.read(s.first_vpn, s.npages, entries[s.offset:s.offset + s.npages])
            present = (entries & pm.PRESENT) != 0
            accessed = covered_pages(spans, total, starts, ends) & present
            idle_map = IdleMap(proc.pid, spans, present, present & ~accessed,
                               np.zeros(total, dtype=bool), (entries & pm.SWAPPED) != 0, now, now - t0)
            by_map = idle_map_usage(idle_map)
            rss = int(np.count_nonzero(present)) << PAGE_SHIFT
            acc = int(np.count_nonzero(accessed)) << PAGE_SHIFT
        else:
            by_map = []
            for mp in maps:
                sp = spans_for([mp], None)
                if sp:
                    b = bytes_within(sp, starts, ends)
                    by_map.append(MappingUsage(mp, -1, -1, b, -1))
            rss = smaps.read_rollup(proc.pid).get("Rss", -1)
            acc = region_bytes
        pss = smaps.read_rollup(proc.pid).get("Pss", -1)
        exact = -1
        if st.exact:
            cur = self.exact_bytes()
            exact = cur - self._exact_base if cur >= 0 else -1
            self._exact_base = cur
        return DamonSample(
            pid=proc.pid, backend="damon", time_s=now, window_s=now - t0, rss_bytes=rss, pss_bytes=pss,
            accessed_bytes=acc, by_mapping=by_map, idle_map=idle_map,
            scan_s=time.process_time() - cpu0 if cpu0 is not None else 0.0,
            regions=regions, accessed_ranges=np.stack([starts, ends], axis=1).astype(np.uint64),
            aggregation_ranges=per_agg, region_accessed_bytes=region_bytes, aggregations=len(per_agg),
            lost_events=self.lost_events,
            kdamond_cpu_s=self.kdamond_cpu_s() - kcpu0 if kcpu0 is not None else 0.0,
            exact_accessed_bytes=exact, settings=st)


_CLEANUP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _thread_cpu_s(stat_path: str) -> float:
    try:
        with open(stat_path, "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()


# -- the backend -----------------------------------------------------------------------

class DamonBackend(Backend):
    name = "damon"
    caps = Capabilities(
        granularity="region", per_page=False, needs_root=True, sees_guest_accesses=True,
        summary="DAMON vaddr region access frequencies (own kdamond; cost bounded by the region count)",
        damon_settings=True)

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


__all__ = ["DamonBackend", "DamonBusy", "DamonFeatureMissing", "DamonSample", "DamonSession",
           "DamonSettings", "RegionAccess", "damon_settings"]
