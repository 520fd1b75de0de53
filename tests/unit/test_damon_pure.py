"""Pure parts of the damon backend: trace parsing, region arithmetic, the
write shim, and the refusal decision over a captured sysfs layout."""
import os

import numpy as np
import pytest

from idlemap.analysis.regions import batch_starts, bytes_within, covered_pages, merge_intervals
from idlemap.backends.damon import DamonBusy, DamonSettings, _refusal, unavailable
from idlemap.kernel import damon_sysfs as ds
from idlemap.kernel.damon_trace import EventParser, parse_events
from idlemap.kernel.maps import PAGE_SIZE, Mapping
from idlemap.records import Span

P = PAGE_SIZE

# Captured from trace_pipe in the test VM (Linux 6.1, trace_clock=mono).
TRACE = b"""\
       kdamond.0-63      [001] .....    12.100021: damon_aggregated: target_id=0 nr_regions=3 4194304-8388608: 20 4
       kdamond.0-63      [001] .....    12.100024: damon_aggregated: target_id=0 nr_regions=3 8388608-12582912: 0 7
       kdamond.0-63      [001] .....    12.100026: damon_aggregated: target_id=0 nr_regions=3 140000000000000-140000000004096: 1 0
CPU:1 [LOST 7 EVENTS]
       kdamond.0-63      [001] .....    12.200031: damon_aggregated: target_id=0 nr_regions=2 4194304-8388608: 19 5
       kdamond.0-63      [001] .....    12.200035: damon_aggregated: target_id=0 nr_regions=2 8388608-140000000004096: 0 0
"""


def test_parse_events_fields_and_lost():
    ev = parse_events(TRACE)
    assert len(ev) == 5
    assert ev.lost == 7
    assert ev.time_s[0] == pytest.approx(12.100021)
    assert ev.start.dtype == np.uint64 and int(ev.start[2]) == 140000000000000
    assert list(ev.nr_accesses) == [20, 0, 1, 19, 0]
    assert list(ev.age) == [4, 7, 0, 5, 0]
    assert list(ev.nr_regions) == [3, 3, 3, 2, 2]


def test_parser_keeps_partial_lines():
    p = EventParser()
    cut = TRACE.index(b"8388608-12582912") + 5
    a = p.feed(TRACE[:cut])
    b = p.feed(TRACE[cut:])
    assert len(a) + len(b) == 5
    assert int(b.start[0]) == 8388608


def test_batches_split_where_addresses_restart():
    ev = parse_events(TRACE)
    idx = batch_starts(ev.target, ev.start, ev.time_s)
    assert list(idx) == [0, 3]
    # two targets in one aggregation stay together
    t = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([1, 5, 0, 9, 1, 0], dtype=np.uint64)
    assert list(batch_starts(t, s, np.zeros(6))) == [0, 4]
    # a pause splits even if addresses increase (events were lost)
    assert list(batch_starts(np.zeros(2, int), np.array([1, 2], np.uint64), np.array([0.0, 1.0]),
                             gap_s=0.05)) == [0, 1]


def test_merge_intervals():
    s = np.array([10, 0, 5, 30, 20], dtype=np.uint64)
    e = np.array([15, 5, 8, 40, 30], dtype=np.uint64)
    ms, me = merge_intervals(s, e)
    # [0,5)+[5,8) touch: merged; [10,15) separate; [20,30)+[30,40) touch
    assert list(zip(ms.tolist(), me.tolist())) == [(0, 8), (10, 15), (20, 40)]
    ms, me = merge_intervals(np.empty(0, np.uint64), np.empty(0, np.uint64))
    assert ms.size == 0


def mapping(start, end):
    return Mapping(start, end, "rw-p", 0, "00:00", 0, "", "anon")


def test_covered_pages_and_bytes_within():
    m1, m2 = mapping(0x10000, 0x20000), mapping(0x40000, 0x48000)
    spans = [Span(m1, m1.start, m1.end, 0), Span(m2, m2.start, m2.end, 16)]
    # one interval from the end of m1 over the hole into m2, one inside m2;
    # both end mid-page
    st = np.array([0x1e000, 0x41000], dtype=np.uint64)
    en = np.array([0x40800, 0x43800], dtype=np.uint64)
    cov = covered_pages(spans, 24, st, en)
    want = np.zeros(24, bool)
    want[14:16] = True          # 0x1e000, 0x1f000
    want[16:20] = True          # 0x40000 (partial), 0x41000..0x43fff (partial last page counts)
    assert (cov == want).all()
    assert bytes_within(spans, st, en) == 2 * P + 0x800 + 0x2800


def test_writer_dry_run_forbid_and_log(tmp_path):
    f = tmp_path / "x"
    f.write_text("0")
    lines = []
    w = ds.ControlWriter(dry_run=True, log=lines.append)
    w.write(str(f), 5)
    assert f.read_text() == "0" and w.journal == [("write", str(f), "5")]
    assert lines == [f"write {f} <- '5'"]
    w = ds.ControlWriter(forbid=True)
    with pytest.raises(ds.WritesForbidden):
        w.write(str(f), 1)
    assert f.read_text() == "0" and w.journal == []
    w = ds.ControlWriter()
    w.write(str(f), "on")
    assert f.read_text() == "on"


def test_writer_from_env(monkeypatch):
    monkeypatch.setenv("IDLEMAP_CONTROL_WRITES", "forbid")
    assert ds.ControlWriter.from_env().forbid
    monkeypatch.setenv("IDLEMAP_CONTROL_WRITES", "dry-run")
    assert ds.ControlWriter.from_env().dry_run


def test_attrs_validate():
    assert ds.MonitoringAttrs().validate() is None
    assert ds.MonitoringAttrs(min_nr_regions=2).validate()
    assert ds.MonitoringAttrs(min_nr_regions=20, max_nr_regions=10).validate()
    assert ds.MonitoringAttrs(sample_us=10, aggr_us=5).validate()
    assert ds.MonitoringAttrs(sample_us=5000, aggr_us=100000).max_nr_accesses == 20
    assert "aggregation 100 ms" in DamonSettings().describe()


def fake_kdamonds(root, kdamonds):
    """A captured-layout copy of admin/kdamonds with the given (state, pid, ops)."""
    os.makedirs(root)
    with open(os.path.join(root, "nr_kdamonds"), "w") as f:
        f.write(f"{len(kdamonds)}\n")
    for i, (state, pid, ops) in enumerate(kdamonds):
        d = os.path.join(root, str(i))
        os.makedirs(os.path.join(d, "contexts", "0", "targets"))
        for name, val in (("state", state), ("pid", pid)):
            with open(os.path.join(d, name), "w") as f:
                f.write(f"{val}\n")
        with open(os.path.join(d, "contexts", "0", "operations"), "w") as f:
            f.write(ops + "\n")
        with open(os.path.join(d, "contexts", "0", "targets", "nr_targets"), "w") as f:
            f.write("0\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is checked after the root check")
def test_refuses_running_kdamond_of_someone_else(tmp_path):
    root = str(tmp_path / "kdamonds")
    fake_kdamonds(root, [("on", 77, "paddr")])
    err = unavailable(root=root)
    assert isinstance(err, DamonBusy)
    msg = str(err)
    assert msg.startswith("DAMON is busy: kdamond 0 (PID 77, paddr) is running")
    assert msg.count(". ") == 0 and "\n" not in msg


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is checked after the root check")
def test_refuses_configured_but_stopped_kdamonds(tmp_path):
    root = str(tmp_path / "kdamonds")
    fake_kdamonds(root, [("off", -1, "vaddr"), ("off", -1, "paddr")])
    err = unavailable(root=root)
    assert isinstance(err, DamonBusy)
    assert "2 kdamonds set up (not running) by someone else" in str(err)


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is checked after the root check")
def test_free_damon_is_usable(tmp_path):
    root = str(tmp_path / "kdamonds")
    fake_kdamonds(root, [])
    assert unavailable(root=root) is None or "CONFIG_DAMON_VADDR" in str(unavailable(root=root))


def test_refusal_sentence_mentions_missing_vaddr():
    infos = [ds.KdamondInfo(0, "on", 5, "paddr", 0, ())]
    msg = _refusal(infos, "; this kernel also lacks DAMON vaddr (CONFIG_DAMON_VADDR is not set)")
    assert msg.endswith("(CONFIG_DAMON_VADDR is not set)")


def _args(**kw):
    import argparse

    from idlemap.commands import add_damon_arguments
    p = argparse.ArgumentParser()
    add_damon_arguments(p)
    argv = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


def test_damon_options_become_settings():
    from idlemap.commands import damon_kwargs
    s = damon_kwargs(_args(damon_sample=2, damon_aggr=50, damon_regions="20-200", damon_estimator="median"),
                     "damon")["settings"]
    assert (s.attrs.sample_us, s.attrs.aggr_us, s.attrs.update_us) == (2000, 50000, 1_000_000)
    assert (s.attrs.min_nr_regions, s.attrs.max_nr_regions, s.estimator, s.exact) == (20, 200, "median", False)
    d = damon_kwargs(_args(), "damon")["settings"]           # no option: idlemap's defaults
    assert (d.attrs.min_nr_regions, d.attrs.max_nr_regions, d.attrs.sample_us) == (100, 1000, 5000)
    assert damon_kwargs(_args(damon_exact=True), "damon")["settings"].exact


@pytest.mark.parametrize("kw,backend,msg", [
    ({"damon_regions": "10-100"}, "page_idle", "--damon-regions goes with --backend damon"),
    ({"damon_exact": True}, "clear_refs", "--damon-exact goes with --backend damon"),
    ({"damon_sample": 50, "damon_aggr": 10}, "damon", "at least the sampling interval"),
])
def test_damon_options_refused_with_one_sentence(kw, backend, msg):
    from idlemap.commands import damon_kwargs
    from idlemap.errors import UsageError
    with pytest.raises(UsageError) as ei:
        damon_kwargs(_args(**kw), backend)
    assert msg in str(ei.value)
    assert damon_kwargs(_args(), backend if backend != "damon" else "page_idle") == {}


@pytest.mark.parametrize("text", ["ten", "2-100", "10-5", "nan-inf"])
def test_bad_damon_regions_refused_while_parsing(text):
    # checked by argparse (commands.damon_regions), before any backend is asked
    import argparse

    from idlemap.commands import damon_regions
    with pytest.raises(argparse.ArgumentTypeError, match="at least 3 regions"):
        damon_regions(text)
