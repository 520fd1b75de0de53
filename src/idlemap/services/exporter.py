"""Prometheus exporter: the latest system-wide window, served over HTTP.

A scan loop runs one ``SystemScanner`` window after another; each finished
window replaces the previous one as a single immutable snapshot.  A custom
Collector builds every metric family from the current snapshot at scrape
time, so label sets of processes that exited are simply not yielded again:
nothing accumulates as processes churn (long-lived labelled Gauges would
keep every PID they ever saw until someone removed it).

Metrics (bytes and seconds, Prometheus naming):
  idlemap_wss_bytes{pid,comm,cgroup}          accessed during the last window
  idlemap_cold_bytes{pid,comm,cgroup}         resident but not accessed
  idlemap_rss_bytes{pid,comm,cgroup}           resident (each frame once per process)
  idlemap_pss_bytes / idlemap_wss_pss_bytes    with --pss (1/mapcount weighted)
  idlemap_cgroup_{wss,cold,rss}_bytes{cgroup}, idlemap_cgroup_processes
                                               with --cgroups (shared pages once per group)
  idlemap_total_{wss,rss}_bytes                all selected processes
  idlemap_scan_seconds, idlemap_window_seconds, idlemap_interval_seconds,
  idlemap_last_scan_timestamp_seconds
  idlemap_scans_total, idlemap_scan_errors_total{reason}, idlemap_processes_vanished_total,
  idlemap_processes_unreadable
  idlemap_backend_info{backend,granularity,version}, idlemap_tlb_flushed (1: each mark is TLB-flushed)
  with --advise (page_idle): the savings advisor over the last N windows
  idlemap_advised_savings_bytes{pid,comm,cgroup}   resident now and idle >= the advised T
                                                   (0: no threshold meets the target)
  idlemap_advised_threshold_seconds{pid,comm,cgroup}
  idlemap_promotion_rate_percent_per_minute{pid,comm,cgroup}   at the advised T
  idlemap_cgroup_advised_savings_bytes{cgroup} ... the same per cgroup (with --cgroups)
  idlemap_advise_target_percent_per_minute, idlemap_advise_windows

The window length is a gauge (idlemap_interval_seconds configured,
idlemap_window_seconds measured), not a label: a label would be part of
every series' identity, so changing --interval would start new series and
break every graph and recording rule across the change.
"""
from __future__ import annotations

import ipaddress
import sys
import threading
import time
from dataclasses import dataclass, field

from ..analysis.advise import Advice, FrameAdvisor
from ..analysis.system import SystemSample, sort_rows
from ..errors import IdlemapError, Unavailable, UsageError
from ..rounds import paced

DEFAULT_LISTEN = "127.0.0.1:9466"
ERROR_REASONS = ("io", "scan_failed")


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9466', '[::1]:9466', 'localhost:9466' or a bare port
    (loopback).  Binding everywhere must be asked for: '0.0.0.0:9466'."""
    text = text.strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if not host:
            raise UsageError(f"bad --listen {text!r}: give the address too, e.g. 127.0.0.1:9466 "
                             "(0.0.0.0:9466 to listen on every interface)")
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"bad --listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9466") from None
    if not 0 <= p <= 65535:
        raise UsageError(f"bad --listen {text!r}: port must be 0-65535")
    return host, p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ExporterState:
    """What the collector reads.  ``sample`` is replaced whole, never
    mutated, so a scrape never sees half a window."""
    backend: str
    granularity: str
    window: str                       # the configured window, e.g. "10s" (for logs; not a label)
    tlb_flushed: bool = False         # False: hot pages cached in the TLB may read idle
    sample: SystemSample | None = None
    scans_total: int = 0
    vanished_total: int = 0
    last_scan_wall: float = 0.0
    errors_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0))
    interval_s: float = 0.0           # the configured window length (idlemap_interval_seconds)
    advisor: FrameAdvisor | None = None   # --advise
    advise_target: float = 0.2
    # {(pid, comm): Advice | None} and {cgroup: Advice | None} of the last window
    advice: dict = field(default_factory=dict)
    cgroup_advice: dict = field(default_factory=dict)

    def record(self, s: SystemSample) -> None:
        # Unreadable processes are a state (the same ones every window, e.g.
        # PID 1 in another user namespace), so a gauge, not error counts.
        self.errors_total["io"] += len(s.errors)
        self.vanished_total += s.vanished
        self.scans_total += 1
        self.last_scan_wall = time.time()
        if self.advisor is not None and s.detail is not None:
            self._advise(s)
        self.sample = s

    def _advise(self, s: SystemSample) -> None:
        import numpy as np
        d = s.detail
        groups: dict = {}
        by_cg: dict[str, list] = {}
        for p, f in zip(s.processes, d.frames):
            groups[("p", p.pid, p.comm)] = (f.pfns, f.pages)
            by_cg.setdefault(p.cgroup, []).append(f)
        for cg, fs in by_cg.items():
            # A page shared inside the group counts once, as idlemap_cgroup_*.
            pf = np.concatenate([f.pfns for f in fs])
            pg = np.concatenate([f.pages for f in fs])
            u, first = np.unique(pf, return_index=True)
            groups[("c", cg)] = (u, pg[first])
        self.advisor.step(d.union, d.idle, groups, s.window_s)
        t = self.advise_target
        self.advice = {(k[1], k[2]): self.advisor.advice(k, t) for k in groups if k[0] == "p"}
        self.cgroup_advice = {k[1]: self.advisor.advice(k, t) for k in groups if k[0] == "c"}

    def failed(self) -> None:
        self.errors_total["scan_failed"] += 1


def make_collector(state: ExporterState, processes: bool = True, cgroups: bool = False,
                   top_n: int = 0, sort: str = "rss", pss: bool = False, guests: bool = False,
                   process_top_n: int | None = None):
    """A prometheus_client Collector over ``state`` (imported lazily: the
    client is an optional dependency).  ``process_top_n`` (default
    ``top_n``) bounds the per-process series separately, so a --cgroups
    exporter can still feed "top processes" panels with a few series."""
    if process_top_n is None:
        process_top_n = top_n
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )
    from prometheus_client.registry import Collector

    from .. import __version__

    class IdlemapCollector(Collector):
        def describe(self):
            return []      # families depend on the data; don't run collect() at register time

        def collect(self):
            info = InfoMetricFamily("idlemap_backend", "How idlemap measures: backend and granularity",
                                    labels=["backend", "granularity", "version"])
            info.add_metric([state.backend, state.granularity, __version__], {})
            yield info
            errs = CounterMetricFamily("idlemap_scan_errors", "Scan errors by reason "
                                       "(io: reading a process failed; scan_failed: a whole window "
                                       "was lost)", labels=["reason"])
            for reason, v in state.errors_total.items():
                errs.add_metric([reason], v)
            yield errs
            yield CounterMetricFamily("idlemap_scans", "Windows completed", value=state.scans_total)
            yield GaugeMetricFamily("idlemap_tlb_flushed", "1 if each mark is followed by a TLB flush; 0 if "
                                    "hot pages cached in the TLB may read idle (WSS may read low)",
                                    value=int(state.tlb_flushed))
            yield CounterMetricFamily("idlemap_processes_vanished",
                                      "Processes that exited while being scanned (not errors)",
                                      value=state.vanished_total)
            s = state.sample
            if s is None:
                return
            yield GaugeMetricFamily("idlemap_interval_seconds", "Configured window length (--interval)",
                                    value=state.interval_s)
            yield GaugeMetricFamily("idlemap_scan_seconds", "Wall time of the last window's scan",
                                    value=s.scan_s)
            yield GaugeMetricFamily("idlemap_window_seconds", "Measured length of the last window",
                                    value=s.window_s)
            yield GaugeMetricFamily("idlemap_processes_unreadable", "Processes the last window could "
                                    "not read (permissions: run as root)", value=s.denied)
            yield GaugeMetricFamily("idlemap_last_scan_timestamp_seconds",
                                    "Unix time the last window ended", value=state.last_scan_wall)
            tw = GaugeMetricFamily("idlemap_total_wss_bytes", "Working set of all selected processes "
                                   "(shared pages once with page_idle)")
            tw.add_metric([], s.total_wss_bytes)
            yield tw
            yield GaugeMetricFamily("idlemap_total_rss_bytes", "Resident memory of all selected processes",
                                    value=s.total_rss_bytes)
            if processes:
                plab = ["pid", "comm", "cgroup"]
                wss = GaugeMetricFamily("idlemap_wss_bytes", "Bytes accessed during the window",
                                        labels=plab)
                cold = GaugeMetricFamily("idlemap_cold_bytes", "Resident bytes not accessed during the window",
                                         labels=plab)
                rss = GaugeMetricFamily("idlemap_rss_bytes", "Resident bytes (each frame once per process)",
                                        labels=plab)
                fams = [wss, cold, rss]
                if pss:
                    pssf = GaugeMetricFamily("idlemap_pss_bytes", "Resident bytes, shared pages weighted "
                                             "1/mapcount", labels=plab)
                    wpss = GaugeMetricFamily("idlemap_wss_pss_bytes", "Working set, shared pages weighted "
                                             "1/mapcount", labels=plab)
                    fams += [pssf, wpss]
                for p in sort_rows(s.processes, sort, process_top_n):
                    lab = [str(p.pid), p.comm, p.cgroup]
                    wss.add_metric(lab, p.wss_bytes)
                    cold.add_metric(lab, p.cold_bytes)
                    rss.add_metric(lab, p.rss_bytes)
                    if pss:
                        if p.pss_bytes >= 0:
                            pssf.add_metric(lab, p.pss_bytes)
                        if p.wss_pss_bytes >= 0:
                            wpss.add_metric(lab, p.wss_pss_bytes)
                yield from fams
            if cgroups:
                cw = GaugeMetricFamily("idlemap_cgroup_wss_bytes", "Bytes the group accessed during the "
                                       "window", labels=["cgroup"])
                cc = GaugeMetricFamily("idlemap_cgroup_cold_bytes", "Resident bytes the group did not "
                                       "access during the window", labels=["cgroup"])
                cr = GaugeMetricFamily("idlemap_cgroup_rss_bytes", "Resident bytes mapped by the group's "
                                       "processes", labels=["cgroup"])
                cn = GaugeMetricFamily("idlemap_cgroup_processes", "Processes in the group",
                                       labels=["cgroup"])
                for c in sort_rows(s.cgroups, sort if sort != "pss" else "rss", top_n):
                    cw.add_metric([c.cgroup], c.wss_bytes)
                    cc.add_metric([c.cgroup], c.cold_bytes)
                    cr.add_metric([c.cgroup], c.rss_bytes)
                    cn.add_metric([c.cgroup], c.nprocs)
                yield from (cw, cc, cr, cn)
            if guests:
                glab = ["pid", "vmm", "guest"]
                gw = GaugeMetricFamily("idlemap_guest_wss_bytes", "Guest RAM the VM accessed during the "
                                       "window (its VMM's guest RAM mappings only)", labels=glab)
                gc = GaugeMetricFamily("idlemap_guest_cold_bytes", "Guest RAM resident on the host and not "
                                       "accessed during the window", labels=glab)
                gr = GaugeMetricFamily("idlemap_guest_rss_bytes", "Guest RAM resident on the host",
                                       labels=glab)
                gs = GaugeMetricFamily("idlemap_guest_ram_bytes", "Guest RAM size", labels=glab)
                for g in s.guests:
                    lab = [str(g.pid), g.vmm, g.name]
                    gw.add_metric(lab, g.wss_bytes)
                    gc.add_metric(lab, g.cold_bytes)
                    gr.add_metric(lab, g.rss_bytes)
                    gs.add_metric(lab, g.ram_bytes)
                yield from (gw, gc, gr, gs)
            if state.advisor is not None:
                yield from _advice_families(state, s, processes, cgroups, sort, top_n, process_top_n)

    return IdlemapCollector()


def _advice_families(state: ExporterState, s: SystemSample, processes: bool, cgroups: bool, sort: str,
                     top_n: int, process_top_n: int):
    """The advisor's series for the processes and groups the other series
    cover (the same --top-n selection)."""
    from prometheus_client.core import GaugeMetricFamily
    yield GaugeMetricFamily("idlemap_advise_target_percent_per_minute", "The promotion-rate target the "
                            "advice meets (--target)", value=state.advise_target)
    yield GaugeMetricFamily("idlemap_advise_windows", "Windows the advice looks back over (--advise-windows)",
                            value=state.advisor.rounds)

    def fams(prefix: str, labels: list[str]):
        return (GaugeMetricFamily(f"idlemap_{prefix}advised_savings_bytes", "Resident bytes idle for at least "
                                  "the advised threshold in the last window (0: no threshold meets the target)",
                                  labels=labels),
                GaugeMetricFamily(f"idlemap_{prefix}advised_threshold_seconds", "The advised idle-age threshold: "
                                  "the shortest whose promotion rate meets the target", labels=labels),
                GaugeMetricFamily(f"idlemap_{prefix}promotion_rate_percent_per_minute", "Pages idle for the "
                                  "advised threshold then touched, per minute, as a share of the working set",
                                  labels=labels))

    def add(f, lab, adv: Advice | None) -> None:
        if adv is None:
            return                      # fewer than 2 windows seen: nothing resolved yet
        a = adv.advised
        f[0].add_metric(lab, 0 if a is None else a.cold_end_bytes)
        if a is not None:
            f[1].add_metric(lab, a.seconds)
            f[2].add_metric(lab, a.rate_pct_per_min)

    if processes:
        pf = fams("", ["pid", "comm", "cgroup"])
        for p in sort_rows(s.processes, sort, process_top_n):
            add(pf, [str(p.pid), p.comm, p.cgroup], state.advice.get((p.pid, p.comm)))
        yield from pf
    if cgroups:
        cf = fams("cgroup_", ["cgroup"])
        for c in sort_rows(s.cgroups, sort if sort != "pss" else "rss", top_n):
            add(cf, [c.cgroup], state.cgroup_advice.get(c.cgroup))
        yield from cf


def serve(host: str, port: int, collector) -> tuple[object, int]:
    """Start the HTTP server in a daemon thread -> (server, bound port)."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    # The exporter's own RSS/CPU (process_resident_memory_bytes ...): what
    # an operator watches to see that it stays small.
    ProcessCollector(registry=registry)
    try:
        started = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server = started[0] if isinstance(started, tuple) else None
    bound = server.server_address[1] if server is not None else port
    return server, bound


def require_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise Unavailable("the exporter needs the Prometheus client library: "
                           "pip install 'idlemap[exporter]' (or prometheus_client)") from None


def scan_loop(scanner, state: ExporterState, interval_s: float, stop: threading.Event,
              max_windows: int | None = None, log=None) -> None:
    """Run windows back to back until ``stop`` (or ``max_windows``); a
    failed window is counted and logged, and the next one starts afresh."""
    log = log or (lambda msg: print(f"idlemap exporter: {msg}", file=sys.stderr, flush=True))
    def window() -> None:
        try:
            s = scanner.sample(remark=True)
        except (IdlemapError, OSError) as e:
            state.failed()
            log(f"window lost: {e}")
            try:
                scanner.mark()
            except (IdlemapError, OSError):
                pass
        else:
            state.record(s)

    scanner.mark()
    for _ in paced(window, interval_s, max_windows, stop=stop):
        pass
