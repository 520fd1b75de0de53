"""Hotness analysis over synthetic rounds (pure: no kernel)."""
import io

import numpy as np
import pytest

import recgen
from idlemap.testing import synth
from idlemap.analysis import hotness as H
from idlemap.analysis import heatmap as HM
from idlemap.analysis import wss as W
from idlemap.analysis import layout as L
from idlemap.errors import BadInput, UsageError
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE
from idlemap.render import heatmap as RH
from idlemap.scan import Calibration, choose_interval

MiB = 1 << 20


# -- layouts ------------------------------------------------------------------
def test_project_and_union():
    src = np.array([[10, 20], [30, 35]])
    dst = np.array([[5, 12], [18, 32], [34, 40]])
    vals = np.arange(15)            # 10..19 -> 0..9, 30..34 -> 10..14
    out = L.project(vals, src, dst, fill=-1)
    want = []
    for lo, hi in dst:
        for v in range(lo, hi):
            want.append(v - 10 if 10 <= v < 20 else (v - 30 + 10 if 30 <= v < 35 else -1))
    assert out.tolist() == want
    assert L.union([src, dst]).tolist() == [[5, 40]]
    assert L.union([np.array([[0, 2]]), np.array([[3, 4]])]).tolist() == [[0, 2], [3, 4]]
    assert L.vpn_index(src, np.array([9, 10, 19, 20, 31])).tolist() == [-1, 0, 9, -1, 11]


# -- history and per-page statistics -----------------------------------------
def test_history_over_changing_layouts_matches_per_round_truth():
    rounds = recgen.changing_rounds(12)
    h = H.build_history(rounds)
    assert h.nrounds == 12
    # the universe: heap (grown), data, lib -- every page any round had
    assert [(s.mapping.label, s.start, s.end) for s in h.spans] == [
        ("[heap]", recgen.HEAP, recgen.HEAP + 2 * MiB),
        ("[anon]", recgen.DATA, recgen.DATA + 4 * MiB),
        ("/usr/lib/libfoo.so", recgen.LIB, recgen.LIB + MiB)]
    for i, r in enumerate(rounds):
        m = r.idle_map
        acc_u, pres_u = h.accessed_row(i), h.present_row(i)
        for s in m.spans:
            sl = m.span_slice(s)
            idx = L.vpn_index(L.ranges_of(h.spans), np.arange(s.first_vpn, s.first_vpn + s.npages))
            assert np.array_equal(acc_u[idx], (m.present & ~m.idle)[sl])
            assert np.array_equal(pres_u[idx], m.present[sl])
        # pages outside this round's layout are neither present nor accessed
        inside = np.zeros(h.npages, bool)
        for s in m.spans:
            inside[L.vpn_index(L.ranges_of(h.spans), np.arange(s.first_vpn, s.first_vpn + s.npages))] = True
        assert not pres_u[~inside].any() and not acc_u[~inside].any()
    st = H.page_stats(h)
    acc = np.stack([h.accessed_row(i) for i in range(12)])
    assert np.array_equal(st.count, acc.sum(0))
    never = ~acc.any(0)
    assert np.array_equal(st.last[~never], 11 - np.argmax(acc[::-1], axis=0)[~never])
    assert np.array_equal(st.first[~never], np.argmax(acc, axis=0)[~never])
    assert (st.first[never] == -1).all() and (st.idle_age[never] == -1).all()
    assert np.array_equal(st.idle_age[~never], (11 - st.last)[~never])


def test_every_kth_round_counts_and_histogram():
    """Page k touched every k-th round: count = ceil(R/k), idle age = R-1 - last multiple."""
    K, R = 24, 30
    m = synth.mapping(recgen.DATA, (K + 1) * PAGE_SIZE)
    sp = synth.spans([m])
    rounds = []
    for r in range(R):
        acc = np.zeros(K + 1, bool)
        for k in range(1, K + 1):
            acc[k] = r % k == 0
        rounds.append(synth.make_round(r, sp, acc))
    st = H.page_stats(H.build_history(rounds))
    k = np.arange(1, K + 1)
    want = -(-R // k)
    assert st.count[1:].tolist() == want.tolist() and st.count[0] == 0
    assert st.idle_age[1:].tolist() == ((R - 1) - ((R - 1) // k) * k).tolist()
    hist = H.histograms(st)
    assert hist.by_count.tolist() == np.bincount(np.concatenate(([0], want)), minlength=R + 1).tolist()
    assert hist.never_accessed == 1 and hist.population_pages == K + 1


def test_phases_hot_cold_and_ranges():
    rounds, truth = recgen.phase_rounds(10)
    h = H.build_history(rounds)
    for p in range(3):
        hw = h.window(10 * p, 10 * p + 10)
        st = H.page_stats(hw)
        t = H.hot_ranges(hw, st)
        got = np.zeros(h.npages, bool)
        for a, b in zip(t.start, t.end):
            got[(a - recgen.DATA) >> PAGE_SHIFT:(b - recgen.DATA) >> PAGE_SHIFT] = True
        assert np.array_equal(got, truth["sets"][p])
        assert t.total_pages == truth["sets"][p].sum()
        assert (t.count_min == 10).all() and (t.count_max == 10).all()
    # whole recording: cold = never accessed in 30 rounds
    st = H.page_stats(h)
    cold = H.cold_ranges(h, st)
    never = ~(truth["A"] | truth["B"] | truth["C"])
    assert cold.total_pages == never.sum()
    assert H.hot_ranges(h, st, min_count=20).total_pages == truth["A"].sum()   # A: 20 of 30 rounds
    assert H.hot_ranges(h, st, min_count=10).total_pages == (truth["A"] | truth["B"] | truth["C"]).sum()
    with pytest.raises(UsageError):
        H.hot_ranges(h, st, min_count=31)


def test_ranges_split_at_mappings_and_merge_gaps():
    a = synth.mapping(recgen.DATA, 16 * PAGE_SIZE)
    b = synth.mapping(recgen.DATA + 16 * PAGE_SIZE, 16 * PAGE_SIZE, "/x.so", "r--p")   # adjacent
    sp = synth.spans([a, b])
    acc = np.zeros(32, bool)
    acc[10:20] = True          # crosses the a/b boundary
    acc[22:24] = True
    acc[26:28] = True          # gap of 2 pages from the previous run
    h = H.build_history([synth.make_round(0, sp, acc)])
    st = H.page_stats(h)
    t = H.hot_ranges(h, st)
    assert [(r["start"] - recgen.DATA) >> PAGE_SHIFT for r in t.rows()] == [10, 16, 22, 26]
    assert [r["mapping"] for r in t.rows()] == ["[anon]", "/x.so", "/x.so", "/x.so"]
    t2 = H.hot_ranges(h, st, merge_gap_pages=2)
    assert [((r["start"] - recgen.DATA) >> PAGE_SHIFT, (r["end"] - recgen.DATA) >> PAGE_SHIFT, r["pages"])
            for r in t2.rows()] == [(10, 16, 6), (16, 28, 8)]


def test_restrict_and_window_errors():
    rounds, truth = recgen.phase_rounds(10)
    h = H.build_history(rounds)
    r = h.restrict([(recgen.DATA + 1024 * PAGE_SIZE, recgen.DATA + 2048 * PAGE_SIZE)])
    assert r.npages == 1024
    assert H.page_stats(r).count.tolist() == [10] * 1024           # exactly B
    with pytest.raises(UsageError, match="no recorded page"):
        h.restrict([(0x1000, 0x2000)])
    with pytest.raises(UsageError, match="no rounds"):
        h.window(40, 50)


def test_wss_report_percentiles_trend_and_split():
    rounds, _ = recgen.phase_rounds(10)
    rep = W.wss_report(H.build_history(rounds))
    sizes = [1024] * 10 + [1024] * 10 + [1524] * 10
    y = np.array(sizes, float) * PAGE_SIZE
    assert rep.wss.p50 == np.percentile(y, 50) and rep.wss.max == y.max() and rep.wss.p99 == np.percentile(y, 99)
    assert rep.trend.direction == "rising" and rep.trend.slope_bytes_per_s > 0
    assert rep.file.max == 0 and rep.anon.max == y.max()
    assert rep.by_mapping[0].label == "[anon]"
    flat = W.trend_of(np.arange(10.0), np.full(10, 5.0))
    assert flat.direction == "flat" and flat.slope_bytes_per_s == 0
    # Three windows: "last quarter vs first" would be one window against another.
    assert W.trend_of(np.arange(3.0), np.array([1.0, 1.0, 1.4])).direction == "unknown"


def test_mapping_granular_history():
    h = H.build_history(recgen.mapping_rounds())
    assert not h.per_page and h.granularity == "mapping"
    rep = W.wss_report(h)
    assert rep.rounds == 5 and rep.wss.max == 4 * MiB + 10 * PAGE_SIZE
    with pytest.raises(BadInput, match="per-mapping totals only"):
        H.page_stats(h)


# -- heatmap ------------------------------------------------------------------
def test_heatmap_collapses_never_resident_and_changes_at_phases():
    rounds, truth = recgen.phase_rounds(10, pages=4096)
    # add a big reserved mapping that is never resident, and a small library
    big = synth.mapping(recgen.DATA + 64 * MiB, 32 * MiB)
    lib = synth.mapping(recgen.LIB, 1 * MiB, "/usr/lib/libz.so", "r-xp")
    data = rounds[0].idle_map.spans[0].mapping
    sp = synth.spans([data, big, lib])
    n = sum(m.npages for m in (data, big, lib))
    re = []
    for r in rounds:
        acc = np.zeros(n, bool)
        acc[:4096] = r.idle_map.accessed
        pres = np.ones(n, bool)
        pres[4096:4096 + big.npages] = False
        re.append(synth.make_round(r.index, sp, acc, pres))
    h = H.build_history(re)
    d = HM.heatmap(h, rows=40)
    assert d.collapsed == [(big.start, big.end)]
    assert d.shown_bytes == (4096 + lib.npages) * PAGE_SIZE
    assert [s.label for s in d.segments] == ["[anon]", "/usr/lib/libz.so"]
    change = HM.column_change(d)
    assert sorted(np.argsort(change)[-2:].tolist()) == [9, 19]        # phase boundaries
    assert np.count_nonzero(change) == 2
    # rows covering A are fully accessed in phase 1 and idle in phase 2
    a_rows = d.row_va_end <= recgen.DATA + 1024 * PAGE_SIZE
    assert (d.values[a_rows, :10] == 1).all() and (d.values[a_rows, 10:20] == 0).all()
    # the terminal rendering shows the same picture
    lines = RH.heatmap_text(d, color=False)
    assert lines[0].split("|")[1] == "@" * 10 + "." * 10 + "@" * 10
    assert "[anon]" in lines[0]


def test_heatmap_png_pixels_change_at_phases(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image
    rounds, truth = recgen.phase_rounds(10)
    d = HM.heatmap(H.build_history(rounds), rows=64)
    p = tmp_path / "h.png"
    box = RH.heatmap_png(d, str(p), title="test")
    img = image.imread(str(p))
    x0, y0, x1, y1 = box
    # a pixel row through the A band (top eighth of the rows), sampled mid-column
    y = int(y0 + (y1 - y0) * 0.05)
    xs = [int(x0 + (x1 - x0) * (c + 0.5) / 30) for c in range(30)]
    px = [tuple(np.round(img[y, x, :3], 2)) for x in xs]
    assert len(set(px[:10])) == 1 and len(set(px[10:20])) == 1 and len(set(px[20:])) == 1
    assert px[0] != px[10] and px[0] == px[20]


# -- --auto-interval rule -----------------------------------------------------
def test_choose_interval_rule():
    # working set keeps growing by >25 % per doubling until 0.8 s
    steps = [(0.1, 0.05), (0.2, 0.10), (0.4, 0.16), (0.8, 0.30), (1.6, 0.33)]
    assert choose_interval(steps[:1], 30) is None
    assert choose_interval(steps[:4], 30) is None
    c = choose_interval(steps, 30)
    assert isinstance(c, Calibration) and c.interval_s == 0.8 and "stable" in c.reason
    assert choose_interval([(0.1, 0.95)], 30).interval_s == 0.1                  # saturated at once
    assert choose_interval([(0.1, 0.2), (0.2, 0.92)], 30).interval_s == 0.1      # next would saturate
    assert choose_interval([(8, 0.01), (16, 0.05), (30, 0.2)], 30).interval_s == 30   # never stable
    assert choose_interval([(0.1, 0.0), (0.2, 0.005)], 30).interval_s == 0.1     # idle process: stable


def test_progress_is_quiet_off_a_terminal():
    from idlemap.render.progress import Progress
    out = io.StringIO()
    p = Progress(10, out=out)
    p.update(3)
    p.clear()
    assert out.getvalue() == ""
    p = Progress(10, out=out, enabled=True, interval_s=2.0)
    p.update(4)
    assert "rounds 4/10" in out.getvalue()
    assert "remaining ~12.0 s" in out.getvalue()
