"""idlemap exporter against real kernels and a real Prometheus server.

Every server a test starts (exporter, Prometheus) listens on loopback and
is stopped by its PID in a finally block / context manager.  Waits are
bounded polls for a state, never timed assertions."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from fleet_helpers import (Bystanders, HotSet, Prometheus, metric, needs_page_idle, needs_prometheus,
                           parse_metrics, scrape, start_exporter, stop_process, wait_for_scans)
from idlemap.kernel import page_idle


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_exporter_on_host_names_backend_and_granularity():
    """clear_refs on the host (page_idle where the kernel has it): the info
    metric says which, and the workload's WSS is there within 1%."""
    exp = None
    with HotSet() as w:
        try:
            exp, port = start_exporter("--interval", "0.5", "--pids", str(w.pid), "--pss")
            m = wait_for_scans(port, 2)
        finally:
            if exp is not None:
                stop_process(exp)
    want = ("page_idle", "page") if page_idle.available() else ("clear_refs", "mapping")
    (info,) = metric(m, "idlemap_backend_info")
    assert (info[0]["backend"], info[0]["granularity"]) == want and info[1] == 1
    (wss,) = metric(m, "idlemap_wss_bytes", pid=w.pid)
    assert "window" not in wss[0] and wss[0]["comm"] and "cgroup" in wss[0]
    assert metric(m, "idlemap_interval_seconds")[0][1] == 0.5      # the window: a gauge, not a label
    assert abs(wss[1] - w.hot_bytes) <= 0.01 * w.hot_bytes
    (cold,) = metric(m, "idlemap_cold_bytes", pid=w.pid)
    (rss,) = metric(m, "idlemap_rss_bytes", pid=w.pid)
    assert cold[1] == rss[1] - wss[1] and cold[1] >= w.cold_bytes
    (pss,) = metric(m, "idlemap_pss_bytes", pid=w.pid)
    assert 0 < pss[1] <= rss[1]
    assert all(v == 0 for _, v in metric(m, "idlemap_scan_errors_total"))
    assert metric(m, "idlemap_scan_seconds")[0][1] > 0


def _prometheus_round_trip(tmp_path, backend_args: list[str], deadline_s: float):
    """Workload -> exporter -> real Prometheus -> /api/v1/query -> WSS."""
    exp = None
    with HotSet() as w:
        try:
            exp, port = start_exporter("--interval", "1", "--pids", str(w.pid), *backend_args)
            with Prometheus(tmp_path, [f"127.0.0.1:{port}"]) as prom:
                expr = f'idlemap_wss_bytes{{pid="{w.pid}"}}'
                res = prom.wait_query(expr, lambda r: len(r) == 1, deadline_s)
                info = prom.wait_query("idlemap_backend_info", lambda r: len(r) == 1, deadline_s)
                up = prom.query('up{job="idlemap"}')
        finally:
            if exp is not None:
                stop_process(exp)
    value = float(res[0]["value"][1])
    truth = w.hot_bytes
    print(f"\nPrometheus /api/v1/query {expr}: {value / 2**20:.3f} MiB for a {truth / 2**20:.0f} MiB "
          f"hot set ({100 * (value - truth) / truth:+.3f}%), backend {info[0]['metric']['backend']}")
    assert abs(value - truth) <= 0.01 * truth, (value, truth)
    assert "window" not in res[0]["metric"]     # not part of the series identity
    assert up and up[0]["value"][1] == "1"
    return info[0]["metric"]


@needs_prometheus
def test_real_prometheus_gets_wss_within_1pct_host(tmp_path):
    """The host check (clear_refs: exact per process for a workload whose
    hot set is whole pages it keeps touching)."""
    labels = _prometheus_round_trip(tmp_path, ["--backend", "clear_refs"], deadline_s=120)
    assert labels["backend"] == "clear_refs" and labels["granularity"] == "mapping"


@pytest.mark.vm
@needs_page_idle
@needs_prometheus
def test_real_prometheus_gets_wss_within_1pct_vm_page_idle(tmp_path):
    """The same round trip in the test VM, measured by the page_idle global pass."""
    # Flushed: HotSet never pauses, so unflushed its cached translations can
    # read all of it idle (CI once read 0 of 256 MiB).
    labels = _prometheus_round_trip(tmp_path, ["--backend", "page_idle", "--tlb-flush", "soft-dirty"],
                                    deadline_s=400)
    assert labels["backend"] == "page_idle" and labels["granularity"] == "page"


REPO = Path(__file__).resolve().parents[2]


def documented_queries() -> list[str]:
    """Every PromQL expression of docs/fleet.md (```promql blocks: a line at
    column 0 starts an expression, indented lines and ")" continue it) and
    of the Grafana dashboard (variables set to match everything)."""
    exprs: list[str] = []
    text = (REPO / "docs" / "fleet.md").read_text()
    for block in re.findall(r"```promql\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if not line.strip():
                continue
            if line[0] in " )" and exprs:
                exprs[-1] += "\n" + line
            else:
                exprs.append(line)
    dash = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    for panel in dash["panels"]:
        for t in panel["targets"]:
            exprs.append(t["expr"].replace("$instance", ".*").replace("$job", ".*"))
    return exprs


@needs_prometheus
def test_documented_promql_and_dashboard_queries_run_on_real_prometheus(tmp_path):
    """The PromQL in docs/fleet.md and every dashboard query parse and
    evaluate on a real Prometheus scraping two exporters (per process and
    --cgroups); those that select series get some."""
    exprs = documented_queries()
    assert len(exprs) >= 20
    exps = []
    with HotSet() as w:
        try:
            for extra in ([], ["--cgroups"]):
                exps.append(start_exporter("--interval", "1", "--pids", str(w.pid), "--pss",
                                           "--backend", "clear_refs", *extra))
            with Prometheus(tmp_path, [f"127.0.0.1:{port}" for _, port in exps]) as prom:
                prom.wait_query("idlemap_cgroup_wss_bytes", lambda r: len(r) == 1, 120)
                prom.wait_query("idlemap_wss_bytes", lambda r: len(r) == 1, 120)
                # rate() needs two samples of every counter in its range.
                prom.wait_query("count_over_time(idlemap_scan_errors_total[5m])",
                                lambda r: bool(r) and all(float(x["value"][1]) >= 2 for x in r), 120)
                empty = []
                for e in exprs:
                    d = prom.api("/api/v1/query", query=e)
                    assert d["status"] == "success", (e, d)
                    if not d["data"]["result"]:
                        empty.append(e)
        finally:
            for p, _ in exps:
                stop_process(p)
    # Only the alert conditions (nothing is wrong) and the join with
    # cAdvisor's series (no Kubernetes here) may come back empty.
    assert all(">" in e or "container_" in e for e in empty), empty


def test_exporter_memory_flat_over_1000_scrapes_with_churn():
    """1,000 scrapes while processes start and exit: the exporter's RSS stays
    within 10% of its value after warm-up, label sets of exited processes go
    away, and no scan error is counted.  --tree limits the scan to our own
    processes (on the host the backend is clear_refs, which would otherwise
    clear every other process's referenced bits)."""
    scrapes, warmup, pool = 1000, 100, 8
    exp = None
    sleepers: list[subprocess.Popen] = []
    with Bystanders(4, mib=1) as kids:
        try:
            exp, port = start_exporter("--interval", "0.05", "--tree", str(os.getpid()))
            wait_for_scans(port, 1)
            base = None
            peak = 0
            series_max = 0
            for i in range(scrapes):
                # One process in, the oldest out, before every scrape: the
                # PIDs the exporter sees keep changing, their number does
                # not.  Every 10th is a forked process with memory of its
                # own, the others a plain `sleep`.
                if i % 10 == 0:
                    kids.stop_one(kids.pids[0])
                    kids.start_one()
                else:
                    sleepers.append(subprocess.Popen(["sleep", "600"]))
                    if len(sleepers) > pool:
                        old = sleepers.pop(0)
                        os.kill(old.pid, signal.SIGKILL)
                        old.wait()
                m = parse_metrics(scrape(port))
                series_max = max(series_max, len(metric(m, "idlemap_wss_bytes")))
                if i == warmup:
                    base = vm_rss_bytes(exp.pid)
                if i > warmup:
                    peak = max(peak, vm_rss_bytes(exp.pid))
            end_rss = vm_rss_bytes(exp.pid)
            assert exp.poll() is None
        finally:
            for p in sleepers:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            if exp is not None:
                stop_process(exp)
    assert base is not None
    print(f"\nexporter RSS after warm-up {base / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
          f"end {end_rss / 2**20:.1f} MiB; max series {series_max}; "
          f"windows {metric(m, 'idlemap_scans_total')[0][1]:.0f}; "
          f"vanished mid-scan {metric(m, 'idlemap_processes_vanished_total')[0][1]:.0f}")
    assert abs(end_rss - base) <= 0.10 * base, (base, end_rss)
    assert peak <= 1.10 * base, (base, peak)
    errors = metric(m, "idlemap_scan_errors_total")
    assert errors and all(v == 0 for _, v in errors), errors
    # Bounded: our live processes (pytest, the exporter, 4 forked, at most
    # pool+1 sleepers) -- not every PID that ever lived.
    assert series_max <= pool + 8, series_max
    assert metric(m, "idlemap_scans_total")[0][1] > 10
