"""idlemap top against real kernels: the page_idle global pass in the test VM,
the clear_refs fallback on the host.  Timing-free: the hot-set workload
(hotset.c) writes its whole hot set over and over, so any window longer than
one pass (milliseconds) sees all of it and none of its cold memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fleet_helpers import PAGE, Bystanders, HotSet, MiB, needs_page_idle
from idlemap.backends.system import ClearRefsSystemScanner, PageIdleSystemScanner, Selection
from idlemap.kernel import page_idle


def top_json(*args: str) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "idlemap", "top", "--json", *args],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


@pytest.mark.vm
@needs_page_idle
def test_top_page_idle_hot_set_within_1pct_among_20_processes():
    with Bystanders(20) as others, HotSet() as w:
        # Three windows: the later ones start from a re-mark that left the
        # frames read idle as the kernel left them (only accessed ones rewritten).
        # Flushed: the hot loop never pauses, so without a flush its
        # translations stay cached and page_idle can read all of it idle
        # (CI once read 0 of 256 MiB); exactness is only promised flushed.
        rounds = top_json("1", "3", "--rows", "0", "--tlb-flush", "soft-dirty")
    assert len(rounds) == 3
    truth = w.hot_bytes
    for r in rounds:
        assert r["schema"] == "idlemap.top/1"
        assert r["backend"] == "page_idle" and r["granularity"] == "page"
        assert r["tlb_exact"] is True
        assert r["errors"] == []
        by_pid = {p["pid"]: p for p in r["processes"]}
        # All 20 bystanders (and the workload) are in the one global pass.
        assert set(others.pids) <= set(by_pid), "a bystander is missing"
        row = by_pid[w.pid]
        print(f"\ntop window {r['round']}: {len(by_pid)} processes, {r['frames']} frames, scan {r['scan_s']:.2f} s; "
              f"workload WSS {row['wss_bytes'] / 2**20:.3f} MiB for {truth / 2**20:.0f} MiB hot "
              f"({100 * (row['wss_bytes'] - truth) / truth:+.4f}%)")
        assert abs(row["wss_bytes"] - truth) <= 0.01 * truth, row
        # The cold part is resident and was not touched.
        assert row["cold_bytes"] >= w.cold_bytes, row
        assert row["rss_bytes"] >= w.hot_bytes + w.cold_bytes
        # Each bystander keeps 1/4 of its 2 MiB hot; the rest of its own
        # memory is cold -- its WSS is far below the workload's.
        for pid in others.pids:
            assert by_pid[pid]["wss_bytes"] < by_pid[pid]["rss_bytes"]
        assert r["frames"] > 0


def test_top_clear_refs_on_host_says_so_and_measures():
    """Without page_idle, `top` falls back to clear_refs per process and says
    why.  --tree limits it to our own processes: clearing other users'
    referenced bits would disturb their measurements."""
    with HotSet() as w:
        p = subprocess.run([sys.executable, "-m", "idlemap", "top", "0.5", "2", "--tree", str(w.pid)]
                           + (["--backend", "clear_refs"] if page_idle.available() else []),
                           capture_output=True, text=True, timeout=300)
        rounds = top_json("0.5", "2", "--tree", str(w.pid), "--backend", "clear_refs")
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    assert first.startswith("backend clear_refs:")
    if not page_idle.available():
        assert "CONFIG_IDLE_PAGE_TRACKING" in first
    assert "RSS(MiB)" in p.stdout and "WSS(MiB)" in p.stdout and "COLD(MiB)" in p.stdout
    truth = w.hot_bytes
    for r in rounds:
        assert r["backend"] == "clear_refs" and r["granularity"] == "mapping"
        (row,) = [x for x in r["processes"] if x["pid"] == w.pid]
        assert abs(row["wss_bytes"] - truth) <= 0.01 * truth, row


def _churn_checks(scanner_cls, **kw):
    """A process that appears between two reads is reported only once it
    has been marked; one that exits is dropped, neither is an error."""
    me = os.getpid()
    with Bystanders(3, mib=1) as kids, scanner_cls(Selection(trees=frozenset({me})), **kw) as sc:
        sc.mark()
        newcomer = kids.start_one()
        s1 = sc.sample()
        pids1 = {p.pid for p in s1.processes}
        assert newcomer not in pids1 and s1.new_processes >= 1
        assert set(kids.pids) - {newcomer} <= pids1
        leaver = kids.pids[0]
        kids.stop_one(leaver)
        s2 = sc.sample()
        pids2 = {p.pid for p in s2.processes}
        assert newcomer in pids2 and leaver not in pids2
        for s in (s1, s2):
            assert s.errors == [] and s.denied == 0
        # The newcomer's first reported window is a real one: mostly cold
        # (it touches 1/4 of its memory), not "everything accessed".
        row = next(p for p in s2.processes if p.pid == newcomer)
        assert row.wss_bytes < row.rss_bytes


def test_processes_coming_and_going_clear_refs():
    _churn_checks(ClearRefsSystemScanner)


@pytest.mark.vm
@needs_page_idle
def test_processes_coming_and_going_page_idle():
    _churn_checks(PageIdleSystemScanner)


@pytest.mark.vm
@needs_page_idle
def test_pss_weighting_splits_shared_pages():
    """Two processes mapping the same 32 MiB of shared memory: each counts it
    whole in RSS/WSS, half of it in PSS; the cgroup counts it once."""
    import mmap
    import numpy as np
    size = 32 * MiB
    # Never touched here: only the two children map its pages (mapcount 2).
    shared = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    pids = []
    try:
        for _ in range(2):
            r, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(r)
                    a = np.frombuffer(shared, dtype=np.uint8)
                    a[::PAGE] = 2
                    os.write(wfd, b"k")
                    while True:
                        a[::PAGE] += 1
                finally:
                    os._exit(0)
            os.close(wfd)
            os.read(r, 1)
            os.close(r)
            pids.append(pid)
        # Flushed: the children write without pause (see the hot-set test).
        with PageIdleSystemScanner(Selection(pids=frozenset(pids)), pss=True, cgroups=True,
                                   tlb_flush="soft-dirty") as sc:
            sc.mark()
            s = sc.sample()
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        shared.close()
    rows = {p.pid: p for p in s.processes}
    for pid in pids:
        p = rows[pid]
        assert p.wss_bytes >= size and p.rss_bytes >= size
        # The shared 32 MiB count half in each; private pages (forked
        # from pytest, mostly still shared COW) add a little on top.
        assert size // 2 <= p.wss_pss_bytes < p.wss_bytes
        assert p.pss_bytes <= p.rss_bytes
    (cg,) = s.cgroups
    assert cg.nprocs == 2
    # Shared pages count once in the group, not twice.
    assert cg.rss_bytes < rows[pids[0]].rss_bytes + rows[pids[1]].rss_bytes - size // 2
