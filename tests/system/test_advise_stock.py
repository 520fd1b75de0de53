"""`advise --cgroup` and `reclaim --cgroup` on Debian's stock kernels, which
have no page_idle: the cgroup scanner takes the backend choice of every
command (``--backend auto``: idlemap's module once it is loaded and we are
root), so the advisor and the loop work there through kmod/.

Run by ``scripts/test.sh kmod-stock`` in the stock VMs, next to
test_kmod_stock.py (the module: conftest's kmod_loaded, built on the host).  The advisor is checked
against the same known schedule as in the test VM (tests/system/schedule.c,
the truth from sched_helpers.py, timing-free); the loop in a dry run (no
swap needed: the 6.1 VM has none).
"""
import json
import os
import time

import pytest

from idlemap.cli import main
from idlemap.kernel import page_idle
from idlemap.testing.machine import cgroup

pytestmark = [pytest.mark.kmod_stock, pytest.mark.skipif(
    os.environ.get("IDLEMAP_IN_STOCK_VM") != "1",
    reason="needs Debian's stock kernel in the VM: scripts/test.sh kmod-stock")]

MiB = 1 << 20


def test_cgroup_advice_through_the_module(kmod_loaded, capsys):
    """Two schedule.c processes in one cgroup, 12 rounds, read by
    CgroupScan with --backend auto: kmod, and the advice within the issue's
    bounds (savings 2%, promotion rate 10%) of the schedule's truth."""
    from idlemap.cgroup_scan import CgroupScan
    from idlemap.kernel import cgroup as cg
    from sched_helpers import Schedule, Shape, group_truth
    assert not page_idle.available()
    shapes = [Shape(32, 8, 4, 64), Shape(16, 4, 2, 48)]
    n = 12
    with cgroup("advise-stock") as path:
        procs = [Schedule(s, path) for s in shapes]
        try:
            scan = CgroupScan(cg.resolve(path), kmax=n)
            assert scan.backend_name == "kmod", scan.choice.reason
            windows = []
            try:
                scan.start()
                assert sorted(scan.members) == sorted(p.pid for p in procs) and scan.tlb["tlb_exact"]
                for _ in range(n):
                    for p in procs:
                        p.round()
                    time.sleep(0.2)
                    windows.append(scan.round().window_s)
                    scan.sync()
                adv = scan.acc.advice(0.2)
            finally:
                scan.close()
            rc = main(["advise", "--cgroup", path, "-n", "3", "-i", "0.3", "--json"])
            out = capsys.readouterr().out
        finally:
            for p in procs:
                p.close()
    worst_cold = worst_rate = 0.0
    for t in adv.thresholds:
        tr = group_truth(shapes, t.rounds, windows, n)
        worst_cold = max(worst_cold, abs(t.cold_mean_bytes - tr["cold_mean_bytes"]) / tr["cold_mean_bytes"])
        rt = tr["rate_pct_per_min"]
        worst_rate = max(worst_rate, abs(t.rate_pct_per_min - rt) / rt if rt else t.rate_pct_per_min)
    k = adv.advised.rounds if adv.advised else None
    end_true = group_truth(shapes, k, windows, n)["cold_end_bytes"] if k else None
    print(json.dumps({"test": "advise_cgroup_kmod", "kernel": os.uname().release, "advised": k,
                      "cold_end_mib": adv.advised and adv.advised.cold_end_bytes / MiB,
                      "cold_end_true_mib": end_true and end_true / MiB, "worst_cold_err_pct": 100 * worst_cold,
                      "worst_rate_err_pct": 100 * worst_rate}))
    assert worst_cold <= 0.02 and worst_rate <= 0.10
    assert k == 4 and abs(adv.advised.cold_end_bytes - end_true) <= 0.02 * end_true
    d = json.loads(out)
    assert rc == 0 and d["source"]["backend"] == "kmod" and len(d["processes"]) == 2


def test_cgroup_reclaim_dry_run_through_the_module(kmod_loaded, capsys):
    """`reclaim --cgroup --dry-run` plans from the module's readings
    (TLB-exact: they decide an action) and changes nothing."""
    from sched_helpers import Schedule, Shape
    with cgroup("reclaim-stock") as path, Schedule(Shape(0, 0, 0, 32), path):
        rc = main(["reclaim", "--cgroup", path, "--period", "0.5", "--count", "6", "--target", "100%/min",
                   "--dry-run", "--json"])
        out, err = capsys.readouterr()
        with open(f"{path}/memory.current") as f:
            mem = int(f.read())
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert rc == 0, err
    s = lines[-1]
    assert s["backend"] == "kmod" and s["tlb_exact"] is True and s["dry_run"]
    assert s["reclaimed_bytes"] == 0 and s["requested_bytes"] >= 30 * MiB and mem >= 32 * MiB
