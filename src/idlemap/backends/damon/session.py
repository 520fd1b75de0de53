"""The DAMON session: one kdamond of our own, its tracepoint reader, and
the clean-up that leaves DAMON as it was found (ownership rules in the
package docstring)."""
from __future__ import annotations

import atexit
import os
import signal
import socket
import threading
import time

import numpy as np

from ...analysis.regions import batch_starts, bytes_within, covered_pages, merge_intervals
from ...analysis.spans import spans_for
from ...analysis.usage import idle_map_usage
from ...errors import FeatureMissing, IdlemapError, TargetExited, UsageError
from ...kernel import damon_sysfs as ds
from ...kernel import damon_trace as dt
from ...kernel import pagemap as pm
from ...kernel import smaps
from ...kernel.maps import PAGE_SHIFT, read_maps
from ...kernel.process import ProcessId, check_same
from ...kernel.tasks import parse_stat
from ...records import IdleMap, MappingUsage
from .settings import (ALTERNATIVE, ESTIMATORS, LOCK_NAME, DamonBusy, DamonFeatureMissing, DamonSample,
                       DamonSettings, RegionAccess, unavailable)


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
            _, rest = parse_stat(fh.read().decode("utf-8", "replace"))
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()
