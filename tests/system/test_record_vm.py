"""Hotness over time on a real kernel with page_idle (the test VM).

Rounds are driven one at a time through the Scanner API -- mark, the
workload touches exactly this round's pages and acknowledges, read -- so
the truth of every round is known and nothing races a clock.  The
recorder-killing test uses the real CLI with real intervals and a hot loop.

Set IDLEMAP_ARTIFACTS to a directory shared with the host (python -m
idlemap.testvm --rw DIR) to keep the record files and the heatmap PNG.
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest

from idlemap import open_record
from idlemap.analysis import hotness as H
from idlemap.analysis import heatmap as HM
from idlemap.cli import main
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE
from idlemap.kernel.process import identify
from idlemap.formats.record import RecordWriter, make_meta
from idlemap.scan import Scanner
from idlemap.testing.workload import Workload

MiB = 1 << 20
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/page_idle/bitmap"),
                       reason="needs page_idle (CONFIG_IDLE_PAGE_TRACKING): run in the test VM"),
]
ARTIFACTS = os.environ.get("IDLEMAP_ARTIFACTS")


def keep(path):
    if ARTIFACTS:
        shutil.copy(path, ARTIFACTS)


def cli_json(*args):
    """The real main(), in-process (the guest pays ~1 s per interpreter start)."""
    buf = io.StringIO()
    old = signal.getsignal(signal.SIGTERM)
    try:
        with redirect_stdout(buf):
            rc = main(list(args))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert rc == 0
    return json.loads(buf.getvalue())


def pages_of(ranges_json, base, npages):
    got = np.zeros(npages, bool)
    for r in ranges_json["ranges"]:
        a = (int(r["start"], 16) - base) >> PAGE_SHIFT
        b = (int(r["end"], 16) - base) >> PAGE_SHIFT
        got[max(a, 0):min(b, npages)] = True
    return got


def record_rounds(w, path, rounds_touch, ranges=None):
    """Record one round per entry of rounds_touch (a list of (first, count)
    runs of the "data" mapping to touch in that round)."""
    proc = identify(w.pid)
    sc = Scanner(proc, backend="page_idle", tlb_flush="soft-dirty", ranges=ranges)
    meta = make_meta(proc, sc.backend_name, sc.granularity, 0.0, len(rounds_touch), sc.tlb_flush)
    with sc, RecordWriter(str(path), meta) as wr:
        sc.start()
        for runs in rounds_touch:
            for first, count in runs:
                w.touch("data", 1, first, count)
            wr.add(sc.round())


def test_three_phases_hot_sets_and_heatmap(tmp_path):
    """Hot set A for 10 rounds, then B, then A∪C: each phase's hot set is
    found within 1% of the truth, and the heatmap changes exactly where the
    phases change."""
    npages = (64 * MiB) >> PAGE_SHIFT
    A, B, C = (0, 4096), (4096, 4096), (12288, 2048)
    phases = [[A]] * 10 + [[B]] * 10 + [[A, C]] * 10
    path = tmp_path / "phases.rec"
    with Workload() as w:
        base = w.map("data", 64)
        w.touch("data")                               # resident before the first mark
        record_rounds(w, path, phases)                 # the whole process is scanned
    keep(path)
    rec = open_record(path)
    assert len(rec) == 30 and rec.complete and rec.meta.backend == "page_idle"
    rng = f"{base:#x}-{base + 64 * MiB:#x}"

    truth = []
    for runs in ([A], [B], [A, C]):
        t = np.zeros(npages, bool)
        for first, count in runs:
            t[first:first + count] = True
        truth.append(t)
    for p in range(3):
        d = cli_json("report", str(path), "hot", "--rounds", f"{10 * p}:{10 * p + 10}", "--range", rng, "--json")
        got = pages_of(d, base, npages)
        wrong = int(np.count_nonzero(got ^ truth[p]))
        assert wrong <= 0.01 * truth[p].sum(), f"phase {p}: {wrong} pages wrong of {truth[p].sum()}"
        # cold in the phase: everything else in the mapping (never accessed in those rounds)
        c = cli_json("report", str(path), "cold", "--rounds", f"{10 * p}:{10 * p + 10}", "--range", rng, "--json")
        assert abs(c["pages_total"] - int((~truth[p]).sum())) <= 0.01 * npages

    # the heatmap's data changes at the phase boundaries and nowhere else
    h = H.build_history(rec.packed_rounds(), pid=rec.meta.pid).restrict([(base, base + 64 * MiB)])
    d = HM.heatmap(h, rows=64)
    change = HM.column_change(d)
    assert sorted(np.argsort(change)[-2:].tolist()) == [9, 19]
    others = np.delete(change, [9, 19])
    assert others.max() < 0.1 * min(change[9], change[19])
    a_rows = d.row_va_end <= base + A[1] * PAGE_SIZE
    b_rows = (d.row_va_start >= base + B[0] * PAGE_SIZE) & (d.row_va_end <= base + (B[0] + B[1]) * PAGE_SIZE)
    assert d.values[a_rows, :10].mean() > 0.99 and d.values[a_rows, 10:20].mean() < 0.01
    assert d.values[b_rows, 10:20].mean() > 0.99 and d.values[b_rows, 20:].mean() < 0.01

    # the PNG: produced, and its pixels change where the phases change
    pytest.importorskip("matplotlib")
    from matplotlib import image

    from idlemap.render.heatmap import heatmap_png
    png = tmp_path / "phases-heatmap.png"
    x0, y0, x1, y1 = heatmap_png(d, str(png), title="three phases: A, then B, then A+C (64 MiB mapping)")
    keep(png)
    img = image.imread(str(png))
    y = int(y0 + (y1 - y0) * 0.03)          # a pixel row through A
    # x is time: the middle of each round's column (rounds driven step by
    # step take uneven times)
    edges = np.concatenate(([0.0], d.col_time_s))
    mids = (edges[:-1] + edges[1:]) / 2 / edges[-1]
    px = [tuple(np.round(img[y, int(x0 + (x1 - x0) * m), :3], 2)) for m in mids]
    assert len(set(px[:10])) == 1 and len(set(px[10:20])) == 1 and px[0] != px[10] and px[0] == px[20]
    # the full-process PNG through the CLI too (what a user runs)
    full = tmp_path / "phases-full.png"
    cli_json("report", str(path), "heatmap", "--png", str(full), "--json")
    assert full.stat().st_size > 20_000
    keep(full)


def test_every_kth_round_histogram(tmp_path):
    """Page group k (8 pages) touched every k-th round for 30 rounds: every
    page's count is ceil(30/k) and its idle age 29 - (last multiple of k)."""
    R, K, G = 30, 30, 8
    plan = []
    for r in range(R):
        plan.append([((k - 1) * G, G) for k in range(1, K + 1) if r % k == 0])
    path = tmp_path / "kth.rec"
    with Workload() as w:
        base = w.map("data", 1)
        w.touch("data")
        record_rounds(w, path, plan, ranges=[(base, base + MiB)])
    keep(path)
    rng = f"{base:#x}-{base + K * G * PAGE_SIZE:#x}"
    d = cli_json("report", str(path), "histogram", "--range", rng, "--json")
    k = np.arange(1, K + 1)
    want_count = np.repeat(-(-R // k), G)
    want = np.bincount(want_count, minlength=R + 1)
    assert [b["pages"] for b in d["by_count"]] == want.tolist()
    ages = np.repeat((R - 1) - ((R - 1) // k) * k, G)
    assert [b["pages"] for b in d["by_idle_age"]] == np.bincount(ages, minlength=R).tolist()
    assert d["never_accessed_pages"] == 0
    # per page, exactly
    h = H.build_history(open_record(path).packed_rounds()).restrict([(base, base + K * G * PAGE_SIZE)])
    st = H.page_stats(h)
    assert st.count.tolist() == want_count.tolist()
    assert st.first.tolist() == [0] * (K * G)


def test_sigkill_of_the_recorder_keeps_finished_rounds(tmp_path):
    path = tmp_path / "killed.rec"
    with Workload() as w:
        base = w.map("data", 8)
        w.touch("data")
        hot = (2 * MiB) >> PAGE_SHIFT
        w.hot("data", 0, hot)
        p = subprocess.Popen([sys.executable, "-m", "idlemap", "record", str(w.pid), "-i", "0.5", "-n", "1000",
                              "-o", str(path), "--json", "--tlb-flush", "soft-dirty"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reported = []
        while len(reported) < 4:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            reported.append(json.loads(line))
        p.send_signal(signal.SIGKILL)
        p.wait()
        w.stop()
    keep(path)
    rec = open_record(path)
    assert not rec.complete and len(rec) >= 4 and rec.meta.granularity == "page"
    rounds = list(rec)                       # every finished round decodes
    for r, d in zip(rounds, reported):
        assert r.index == d["round"] and r.sample.accessed_bytes == d["wss_bytes"]
        assert r.idle_map is not None and r.idle_map.npages > 0
    h = H.build_history(rec.packed_rounds()).restrict([(base, base + 8 * MiB)])
    st = H.page_stats(h)
    assert st.count[hot:].max() == 0                       # the cold 6 MiB: never accessed
    assert (st.count[:hot] >= 1).mean() > 0.99             # the hot loop's pages: seen
    assert st.present_last.all()


def test_live_hot_and_heatmap():
    """`idlemap hot PID` and `idlemap heatmap PID`: scan, then report (real
    intervals, a hot loop over the first 1 MiB of 4 MiB)."""
    with Workload() as w:
        base = w.map("data", 4)
        w.touch("data")
        hot = MiB >> PAGE_SHIFT
        w.hot("data", 0, hot)
        rng = f"{base:#x}-{base + 4 * MiB:#x}"
        d = cli_json("hot", str(w.pid), "-n", "3", "-i", "0.4", "--tlb-flush", "soft-dirty",
                     "--range", rng, "--min-count", "1", "--json")
        got = pages_of(d, base, 4 * MiB >> PAGE_SHIFT)
        assert not got[hot:].any() and got[:hot].mean() > 0.99
        c = cli_json("hot", str(w.pid), "-n", "2", "-i", "0.4", "--tlb-flush", "soft-dirty",
                     "--range", rng, "--cold", "--json")
        assert c["pages_total"] >= (3 * MiB) >> PAGE_SHIFT
        # (without --tlb-flush, the TLB effect of docs/tlb.md hides most of a hot set
        # this small: 256 pages, of which ~17 % were seen in a trial run)
        m = cli_json("heatmap", str(w.pid), "-n", "3", "-i", "0.3", "--tlb-flush", "soft-dirty",
                     "--range", rng, "--rows", "4", "--json")
        w.stop()
    assert m["rows"] == 4 and m["cols"] == 3
    assert min(m["values"][0]) > 0.9 and max(max(r) for r in m["values"][1:]) == 0.0
