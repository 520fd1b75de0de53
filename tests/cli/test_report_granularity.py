"""Reports degrade by granularity instead of refusing (issue 16, items 3-4):
a clear_refs record (per-mapping totals) gets hot/cold/histogram/heatmap by
mapping; every title says its granularity; the terminal heatmap labels the
biggest mappings first, shows start addresses and a key; hot/cold sort by
size by default."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
import recgen  # noqa: E402

from idlemap.testing import synth  # noqa: E402
from idlemap.analysis import hotness as H  # noqa: E402
from idlemap.analysis import by_mapping as BM
from idlemap.analysis import heatmap as HM
from idlemap.cli import main  # noqa: E402
from idlemap.kernel.maps import PAGE_SIZE  # noqa: E402
from idlemap.render import heatmap as RH  # noqa: E402

MiB = 1 << 20


@pytest.fixture
def mapping_rec(tmp_path):
    p = tmp_path / "cr.rec"
    recgen.write(p, recgen.mapping_rounds(5), granularity="mapping")
    return str(p)


def cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    # synthetic records are not TLB-flushed: drop that one-line note
    out = "\n".join(line for line in out.splitlines() if not line.startswith("note: these rounds"))
    return rc, out, err


def test_mapping_series_and_tables():
    h = H.build_history(recgen.mapping_rounds(5))
    ms = BM.mapping_series(h)
    assert [m.label for m in ms.mappings] == ["[heap]", "[anon]"]          # VA order
    assert ms.rounds_accessed.tolist() == [3, 4] and ms.idle_age.tolist() == [0, 0]
    hot, th = BM.hot_mappings(h)                 # default: accessed in every round: none
    assert hot == [] and th == {"min_count": 5, "rounds": 5}
    hot, _ = BM.hot_mappings(h, 3)
    assert [r["mapping"] for r in hot] == ["[anon]", "[heap]"]              # biggest first
    cold, _ = BM.cold_mappings(h)
    assert [(r["mapping"], r["cold_bytes"]) for r in cold] == [("[anon]", 4 * MiB),
                                                                ("[heap]", 2 * MiB - 20 * PAGE_SIZE)]
    hist = BM.mapping_histograms(h)
    assert hist.by_count.tolist() == [0, 0, 0, 512, 2048, 0] and hist.never_accessed == 0


def test_mapping_heatmap_rows_are_mappings():
    h = H.build_history(recgen.mapping_rounds(5))
    d = BM.mapping_heatmap(h, rows=10)
    assert d.granularity == "mapping" and d.rows == 2 and d.cols == 5
    assert [s.label for s in d.segments] == ["[heap]", "[anon]"]
    assert np.allclose(d.values[1], [0, 1 / 8, 2 / 8, 3 / 8, 4 / 8])
    one = BM.mapping_heatmap(h, rows=1)          # only the biggest fits
    assert [s.label for s in one.segments] == ["[anon]"] and one.omitted_mappings == 1


@pytest.mark.parametrize("kind", ["hot", "cold", "histogram", "heatmap"])
def test_clear_refs_record_reports_by_mapping(capsys, mapping_rec, kind, tmp_path):
    rc, out, err = cli(capsys, "report", mapping_rec, kind, "--color", "never")
    assert rc == 0, err
    assert "by mapping" in out.splitlines()[0]
    rc, out, err = cli(capsys, "report", mapping_rec, kind, "--json")
    d = json.loads(out)
    assert rc == 0 and d["granularity"] == "mapping" and d["source"]["granularity"] == "mapping"
    if kind in ("hot", "cold"):
        assert "mappings" in d and "ranges" not in d
    if kind in ("histogram", "heatmap"):
        pytest.importorskip("matplotlib")
        png = tmp_path / f"{kind}.png"
        rc, out, err = cli(capsys, "report", mapping_rec, kind, "--png", str(png), "--color", "never")
        assert rc == 0 and png.stat().st_size > 1000


def test_mapping_record_range_is_one_sentence(capsys, mapping_rec):
    rc, out, err = cli(capsys, "report", mapping_rec, "hot", "--range", "0x1000-0x2000")
    assert rc == 2 and "per-mapping totals" in err and len(err.strip().splitlines()) == 1


def test_page_record_titles_say_by_page(capsys, tmp_path):
    rounds, _ = recgen.phase_rounds(4)
    p = tmp_path / "p.rec"
    recgen.write(p, rounds)
    for kind in ("hot", "cold", "histogram", "heatmap"):
        rc, out, _ = cli(capsys, "report", str(p), kind, "--color", "never")
        assert rc == 0 and ", by page" in out.splitlines()[0], (kind, out[:200])


def test_damon_record_titles_say_by_region(capsys, tmp_path):
    # A DAMON record has per-page bitmaps expanded from its regions: the
    # page reports work, and say their unit is the region.
    rounds, _ = recgen.phase_rounds(4)
    p = tmp_path / "d.rec"
    recgen.write(p, rounds, granularity="region")
    for kind in ("hot", "histogram", "heatmap", "wss"):
        rc, out, _ = cli(capsys, "report", str(p), kind, "--color", "never")
        assert rc == 0 and "by DAMON region" in out.splitlines()[0], (kind, out[:200])
    rc, out, _ = cli(capsys, "report", str(p), "hot", "--json")
    d = json.loads(out)
    assert d["granularity"] == "region" and "ranges" in d


def test_terminal_heatmap_labels_biggest_mapping_first():
    # A thin group at the top and a 226 MiB mapping starting in the same row:
    # the big one keeps the label (issue 16: "[heap] +1 more" took row 0).
    d = HM.HeatmapData(np.full((10, 3), 0.5), np.zeros((10, 3), np.int64), np.zeros((10, 3), np.int64),
                      np.zeros(10, np.int64), np.zeros(10, np.int64), 1.0, [(0, 0), (1, 1), (2, 2)],
                      np.array([1.0, 2.0, 3.0]),
                      [HM.HeatmapSegment("[heap] +1 more", "group", 0.0, 0.3, 0x1000, 0x501000, 5 * MiB, 2),
                       HM.HeatmapSegment("[anon]", "anon", 0.3, 10.0, 0x7f0000000000, 0x7f000e200000, 226 * MiB)],
                      [], 231 * MiB)
    lines = RH.heatmap_text(d, color=False)
    assert "[anon] 226 MiB" in lines[0] and lines[0].endswith("| 0x7f0000000000")
    assert not any("[heap]" in line for line in lines)
    key = RH.key_text(color=False)
    assert "'.' 0%" in key and "'@' 88-100%" in key and "not resident" in key
    assert "\033[48;5;" in RH.key_text(color=True)


def test_hot_and_cold_sort_by_size_by_default(capsys, tmp_path):
    small = synth.mapping(0x10000, 4 * PAGE_SIZE, "[heap]")
    big = synth.mapping(0x7f0000000000, 64 * PAGE_SIZE)
    sp = synth.spans([small, big])
    n = sum(s.npages for s in sp)
    rounds = [synth.make_round(r, sp, np.ones(n, bool), np.ones(n, bool)) for r in range(3)]
    p = tmp_path / "s.rec"
    recgen.write(p, rounds)
    rc, out, _ = cli(capsys, "report", str(p), "hot", "--json")
    assert [r["mapping"] for r in json.loads(out)["ranges"]] == ["[anon]", "[heap]"]
    rc, out, _ = cli(capsys, "report", str(p), "hot", "--json", "--sort", "va")
    assert [r["mapping"] for r in json.loads(out)["ranges"]] == ["[heap]", "[anon]"]
