"""The damon backend on a kernel with DAMON vaddr (the test VM, Linux 6.1).

Ownership and restoration are checked exactly: the whole
/sys/kernel/mm/damon tree is snapshotted (every readable file) before and
compared byte for byte after.  No test here depends on timing except
"DAMON sees a continuously hot range", which asks only that every hot page
be seen at some point in several seconds of 5 ms sampling.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from idlemap.backends.damon import (DamonBackend, DamonBusy, DamonFeatureMissing, DamonSession,
                                    damon_settings)
from idlemap.errors import TargetExited
from idlemap.kernel import damon_sysfs as ds
from idlemap.kernel import damon_trace as dt
from idlemap.kernel.features import kernel_config
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.kernel.process import identify
from idlemap.testing.child import end
from idlemap.testing.workload import Workload

MiB = 1 << 20


def _vaddr_config() -> bool:
    cfg, _ = kernel_config()
    return cfg.get("CONFIG_DAMON_VADDR") == "y"


pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not ds.available(), reason="no DAMON sysfs (CONFIG_DAMON_SYSFS is not set)"),
              pytest.mark.skipif(not _vaddr_config(), reason="no DAMON vaddr (CONFIG_DAMON_VADDR is not set)")]


def kdamond_threads() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("kdamond"):
                        out.append(int(d))
            except OSError:
                pass
    return out


def our_instances() -> list[str]:
    tf = dt.find_tracefs()
    if tf is None:
        return []
    return [n for n in os.listdir(os.path.join(tf, "instances")) if n.startswith(dt.INSTANCE_PREFIX)]


@pytest.fixture
def pristine():
    """DAMON unused at the start, and the proof it is left as it was."""
    assert ds.nr_kdamonds() == 0, "a previous test left a kdamond behind"
    before = ds.snapshot()
    yield before
    assert kdamond_threads() == []
    assert ds.snapshot() == before
    assert our_instances() == []


@pytest.fixture
def workload():
    with Workload() as w:
        w.map("data", 16)
        w.touch("data")
        yield w


def wait_for_row(p, timeout_s=120):
    """Read the wss output until its first data row (a line starting with a number)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.strip()[:1].isdigit():
            return seen
    raise AssertionError(f"no data row from idlemap wss: {seen!r}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_during_scan_restores_everything(pristine, workload, sig):
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", "--backend", "damon", str(workload.pid), "0.3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_row(p)
        assert ds.nr_kdamonds() == 1 and len(kdamond_threads()) == 1     # really scanning
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        end(p)
    assert p.returncode in (0, 130), err
    assert "Traceback" not in err


def test_a_second_idlemap_is_told_the_kdamond_is_another_idlemaps(pristine, workload):
    """Two idlemaps on DAMON: the second one refuses with exit 75 and says
    the running kdamond is another idlemap's (not "someone else's" that
    idlemap would never touch), and the first one goes on."""
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", "--backend", "damon", str(workload.pid), "0.3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_row(p)
        q = subprocess.run([sys.executable, "-m", "idlemap", "wss", "--backend", "damon", str(workload.pid),
                            "0.2", "1"], capture_output=True, text=True, timeout=120)
        lines = [line for line in q.stderr.splitlines() if line.strip()]
        assert q.returncode == DamonBusy.exit_code and len(lines) == 1, q.stderr
        assert "another idlemap process is using it" in lines[0]
        assert p.poll() is None                     # the first one still scanning
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    finally:
        end(p)


def test_interrupt_at_every_write_of_start_leaves_nothing(pristine, workload):
    proc = identify(workload.pid)
    log = []
    s = DamonSession([proc], writer=ds.ControlWriter(log=log.append))
    s.start()
    s.stop()
    writes = len([line for line in log if not line.startswith("rmdir")])
    n_start = log.index(next(line for line in log if line.endswith("state <- 'on'"))) + 1
    assert n_start >= 10 and writes > n_start

    for k in range(n_start):
        calls = []

        def hook(line, k=k):
            calls.append(line)
            if len(calls) == k + 1:
                raise KeyboardInterrupt        # as if Ctrl-C landed before write k
        s = DamonSession([proc], writer=ds.ControlWriter(log=hook))
        with pytest.raises(KeyboardInterrupt):
            s.start()
        assert ds.snapshot() == pristine, f"interrupted before write {k}: {calls[k]}"
        assert kdamond_threads() == [] and our_instances() == []


def test_refuses_a_kdamond_someone_else_started(pristine, workload):
    # Play "someone else": a kdamond set up and started without idlemap.
    kd = ds.KDAMONDS
    w = ds.ControlWriter()
    w.write(f"{kd}/nr_kdamonds", 1)
    try:
        f = ds.KdamondFiles(0)
        ds.configure(w, f, "vaddr", [workload.pid], ds.MonitoringAttrs())
        for state in ("off", "on"):
            if state == "on":
                w.write(f.state, "on")
            theirs = ds.snapshot()
            p = subprocess.run([sys.executable, "-m", "idlemap", "wss", "--backend", "damon", str(workload.pid),
                                "0.2", "1"], capture_output=True, text=True, timeout=120)
            lines = [line for line in p.stderr.splitlines() if line.strip()]
            assert p.returncode == DamonBusy.exit_code and len(lines) == 1, p.stderr
            want = "is running and idlemap did not start it" if state == "on" else "set up (not running) by someone else"
            assert want in lines[0]
            assert ds.snapshot() == theirs          # their kdamond untouched
    finally:
        if ds.read(f"{kd}/0/state") == "on":
            w.write(f"{kd}/0/state", "off")
        w.write(f"{kd}/nr_kdamonds", 0)


def test_cli_settings_reach_the_kdamond_and_the_output(pristine, workload):
    """--damon-* options: the kdamond runs with them (read back from sysfs
    mid-scan) and every JSON row says which settings produced it."""
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", "--backend", "damon", str(workload.pid),
                          "0.5", "3", "--json", "--damon-sample", "2", "--damon-aggr", "40",
                          "--damon-regions", "20-200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        row = json.loads(p.stdout.readline())
        f = ds.KdamondFiles(0)          # ours: DAMON was unused before (pristine)
        live = {os.path.relpath(path, f.ctx + "/monitoring_attrs"): open(path).read().strip()
                for path in (f.sample_us, f.aggr_us, f.min_nr_regions, f.max_nr_regions)}
        out, err = p.communicate(timeout=120)
    finally:
        end(p)
    assert p.returncode == 0, err
    assert live == {"intervals/sample_us": "2000", "intervals/aggr_us": "40000",
                    "nr_regions/min": "20", "nr_regions/max": "200"}
    assert row["backend"] == "damon"
    assert row["damon"]["sample_us"] == 2000 and row["damon"]["min_nr_regions"] == 20


def test_exact_mode_says_the_kernel_lacks_it(pristine, workload):
    if os.path.exists(os.path.join(ds.KdamondFiles(0).scheme(0), "ops_filters")):
        pytest.skip("this kernel has DAMOS ops filters")
    be = DamonBackend(identify(workload.pid), damon_settings(exact=True))
    with pytest.raises(DamonFeatureMissing) as ei:
        with be:
            be.mark()
    assert "Linux 6.14" in str(ei.value) and "\n" not in str(ei.value)


def test_target_exit_ends_the_scan_and_restores(pristine):
    w = Workload()
    w.map("data", 8)
    w.touch("data")
    be = DamonBackend(identify(w.pid), damon_settings(aggr_ms=50))
    with be:
        be.mark()
        w.kill()
        with pytest.raises(TargetExited):
            be.sample()


def test_continuously_hot_range_is_seen(pristine):
    hot_pages = (8 * MiB) >> PAGE_SHIFT
    with Workload() as w:
        a = w.map("data", 32)
        w.touch("data")
        be = DamonBackend(identify(w.pid), damon_settings(sample_ms=5, aggr_ms=100))
        with be:
            be.mark()
            # Re-touch the hot range from the driver: accesses keep coming for
            # the whole window, one pass at a time.
            stop_at = time.monotonic() + 3.0
            while time.monotonic() < stop_at:
                w.touch("data", 1, 0, hot_pages)
                time.sleep(0.01)
            s = be.sample(remark=False)
        m = s.idle_map
        sp = next(x for x in m.spans if x.start <= a < x.end)
        off = sp.offset + ((a - sp.start) >> PAGE_SHIFT)
        acc = m.accessed[off:off + (32 * MiB >> PAGE_SHIFT)]
        # DAMON samples one page per region and, like page_idle, clears young
        # bits without a TLB flush, so a region straddling the hot/cold edge can
        # read cold in every aggregation (CI saw the hot range's tail missed
        # once in ~20 runs; 0 of 2048 missed in 6 runs alone). DAMON promises
        # region-level accuracy, not per page: 90% of the range must be seen.
        missed = hot_pages - int(np.count_nonzero(acc[:hot_pages]))
        print(f"continuously hot 8 MiB: {missed} of {hot_pages} pages read idle")
        assert missed <= hot_pages // 10, f"{missed} of {hot_pages} hot pages read idle"
        assert s.aggregations >= 1 and s.lost_events == 0
        assert s.accessed_bytes <= s.rss_bytes
        assert all(r.max_nr_accesses == 20 for r in s.regions)
        assert np.count_nonzero(acc) * 4096 == int(
            sum(min(e, a + 32 * MiB) - max(st, a) for st, e in s.accessed_ranges.tolist()
                if st < a + 32 * MiB and e > a))
