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
    from sched_helpers import SHAPES, compare, read_group, scheduled
    assert not page_idle.available()
    n = 12
    with cgroup("advise-stock") as path, scheduled(SHAPES, path) as procs:
        got = read_group(path, procs, n, expect_backend="kmod")
        rc = main(["advise", "--cgroup", path, "-n", "3", "-i", "0.3", "--json"])
        out = capsys.readouterr().out
    adv, c = got.advice, compare(SHAPES, got, n)
    k, end_true = c["advised"], c["cold_end_true_bytes"]
    print(json.dumps({"test": "advise_cgroup_kmod", "kernel": os.uname().release, "advised": k,
                      "cold_end_mib": adv.advised and adv.advised.cold_end_bytes / MiB,
                      "cold_end_true_mib": end_true and end_true / MiB,
                      "worst_cold_err_pct": 100 * c["worst_cold"], "worst_rate_err_pct": 100 * c["worst_rate"]}))
    assert c["worst_cold"] <= 0.02 and c["worst_rate"] <= 0.10
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
