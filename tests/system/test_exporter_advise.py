"""idlemap exporter --advise: the advisor's series per process and per
cgroup, scraped by a real Prometheus server on loopback (the test VM:
page_idle).  Servers are stopped by PID; waits are bounded polls."""
from __future__ import annotations

import pytest
from fleet_helpers import (
    HotSet,
    Prometheus,
    metric,
    needs_page_idle,
    needs_prometheus,
    start_exporter,
    stop_process,
    wait_for_scans,
)

MiB = 1 << 20


@pytest.mark.vm
@needs_page_idle
@needs_prometheus
def test_advised_savings_reach_prometheus(tmp_path):
    """A static workload: 32 MiB written without pause, 96 MiB never again.
    Every threshold sees no promotion (the hot set is accessed in every
    window, the cold set never), so the advice is one window and the savings
    are the cold set, within 2% (its other memory is < 1 MiB)."""
    exp = None
    with HotSet(32, 96) as w:
        try:
            exp, port = start_exporter("--interval", "0.5", "--pids", str(w.pid), "--backend", "page_idle",
                                       "--tlb-flush", "soft-dirty",     # HotSet never pauses
                                       "--advise", "--advise-windows", "4", "--cgroups", "--top-processes", "5")
            m = wait_for_scans(port, 3)
            with Prometheus(tmp_path, [f"127.0.0.1:{port}"]) as prom:
                sav = prom.wait_query(f'idlemap_advised_savings_bytes{{pid="{w.pid}"}}', lambda r: len(r) == 1, 400)
                rate = prom.wait_query(f'idlemap_promotion_rate_percent_per_minute{{pid="{w.pid}"}}',
                                       lambda r: len(r) == 1, 400)
                thr = prom.query(f'idlemap_advised_threshold_seconds{{pid="{w.pid}"}}')
                cg = prom.wait_query("idlemap_cgroup_advised_savings_bytes", lambda r: len(r) >= 1, 400)
                tgt = prom.query("idlemap_advise_target_percent_per_minute")
        finally:
            if exp is not None:
                stop_process(exp)
    savings = float(sav[0]["value"][1])
    print(f"\nPrometheus: advised savings {savings / MiB:.3f} MiB for a 96 MiB cold set "
          f"({100 * (savings - w.cold_bytes) / w.cold_bytes:+.3f}%), rate {rate[0]['value'][1]}%/min, "
          f"T {thr[0]['value'][1]} s; cgroup {cg[0]['metric']['cgroup']}: {float(cg[0]['value'][1]) / MiB:.1f} MiB")
    assert abs(savings - w.cold_bytes) <= 0.02 * w.cold_bytes
    assert float(rate[0]["value"][1]) == 0.0
    assert float(thr[0]["value"][1]) == pytest.approx(0.5, rel=0.5)    # one window of ~0.5 s
    assert float(tgt[0]["value"][1]) == 0.2
    assert max(float(r["value"][1]) for r in cg) >= 0.98 * w.cold_bytes
    # The scrape the exporter answered directly says the same.
    (s,) = metric(m, "idlemap_advise_windows")
    assert s[1] == 4
