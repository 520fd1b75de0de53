"""Pure parts of the system-wide scan: attribution of one global reading to
processes and cgroups, the light maps parse, process trees, the exporter's
metric families and the top renderers -- on made-up frames and text."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from idlemap.analysis import system as system_analysis
from idlemap.backends.system import MERGE_GAP_PAGES, vma_ranges
from idlemap.kernel.maps import PAGE_SIZE
from idlemap.kernel.tasks import TaskInfo, descendants, parse_cgroup, parse_stat
from idlemap.render import top as render

MiB = 1 << 20

P = PAGE_SIZE


def pf(pfns, pages=None):
    pfns = np.array(pfns, np.uint64)
    pages = np.ones(pfns.size, np.int64) if pages is None else np.array(pages, np.int64)
    return system_analysis.ProcFrames.from_tracked(pfns, pages)


def test_from_tracked_dedups_frames_and_counts_mappings():
    f = pf([7, 3, 7, 9])
    assert f.pfns.tolist() == [3, 7, 9]
    assert f.maps.tolist() == [1, 2, 1]
    assert f.pages.tolist() == [1, 1, 1]


def test_attribute_shared_page_counts_whole_in_each_process():
    a, b = pf([1, 2, 3]), pf([3, 4])
    union = system_analysis.union_of([a, b])
    assert union.tolist() == [1, 2, 3, 4]
    idle = np.array([True, False, False, True])      # frames 2 and 3 accessed
    assert system_analysis.attribute(a, union, idle) == (3 * P, 2 * P, -1, -1)
    assert system_analysis.attribute(b, union, idle) == (2 * P, 1 * P, -1, -1)
    # Together: frame 3 once.
    assert system_analysis.union_usage([a, b], union, idle) == (4 * P, 2 * P)


def test_attribute_pss_weights_by_mapcount_and_thp_weighs_512():
    a = pf([10, 20, 20, 30], pages=[1, 1, 1, 512])   # 20 mapped twice by a, 30 a THP head
    union = np.array([10, 20, 30], np.uint64)
    idle = np.array([False, False, True])
    mapcount = np.array([1, 4, 2])                    # 20: 2 of a's + 2 elsewhere
    rss, wss, pss, wpss = system_analysis.attribute(a, union, idle, mapcount)
    assert rss == (1 + 1 + 512) * P and wss == 2 * P
    assert pss == round((1 + 2 / 4 + 512 / 2) * P)
    assert wpss == round((1 + 2 / 4) * P)


def test_attribute_mapcount_below_own_mappings_is_raised():
    # kpagecount read after the pagemap: a frame unmapped meanwhile can read
    # fewer mappings than we saw; never weigh a page more than whole.
    a = pf([5, 5])
    union = np.array([5], np.uint64)
    _, _, pss, _ = system_analysis.attribute(a, union, np.array([False]), np.array([0]))
    assert pss == P


def test_union_with_pages_keeps_thp_weight():
    u, pages = system_analysis.union_with_pages([pf([1, 512], [1, 512]), pf([512, 2], [512, 1])])
    assert u.tolist() == [1, 2, 512] and pages.tolist() == [1, 1, 512]


def test_cgroups_count_shared_frames_once_and_add_pss():
    a, b, c = pf([1, 2]), pf([2, 3]), pf([4])
    union = system_analysis.union_of([a, b, c])
    idle = np.array([False, True, False, True])
    rows = [system_analysis.ProcessUsage(1, "a", "/x", 2 * P, 1 * P, 1.0, 100, 50),
            system_analysis.ProcessUsage(2, "b", "/x", 2 * P, 1 * P, 1.0, 200, 60),
            system_analysis.ProcessUsage(3, "c", "/y", 1 * P, 0, 1.0, -1, -1)]
    cg = {c.cgroup: c for c in system_analysis.cgroup_usage_exact(rows, [a, b, c], union, idle)}
    assert (cg["/x"].nprocs, cg["/x"].rss_bytes, cg["/x"].wss_bytes) == (2, 3 * P, 2 * P)
    assert (cg["/x"].pss_bytes, cg["/x"].wss_pss_bytes) == (300, 110)
    assert cg["/y"].pss_bytes == -1 and cg["/y"].cold_bytes == P
    summed = {c.cgroup: c for c in system_analysis.cgroup_usage_summed(rows)}
    assert summed["/x"].rss_bytes == 4 * P     # clear_refs: no frames, shared counted twice


def test_sort_rows():
    rows = [system_analysis.ProcessUsage(3, "c", "", 10, 1, 1), system_analysis.ProcessUsage(1, "a", "", 5, 5, 1),
            system_analysis.ProcessUsage(2, "b", "", 10, 9, 1)]
    assert [r.pid for r in system_analysis.sort_rows(rows, "wss")] == [2, 1, 3]
    assert [r.pid for r in system_analysis.sort_rows(rows, "rss")] == [2, 3, 1]
    assert [r.pid for r in system_analysis.sort_rows(rows, "cold")] == [3, 2, 1]
    assert [r.pid for r in system_analysis.sort_rows(rows, "wss", 1)] == [2]
    with pytest.raises(ValueError):
        system_analysis.sort_rows(rows, "bogus")


MAPS = b"""\
55d0c0000000-55d0c0002000 r--p 00000000 08:01 100 /usr/bin/python3
55d0c0002000-55d0c0010000 r-xp 00002000 08:01 100 /usr/bin/python3
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f4000000000 ---p 00000000 00:00 0
7f4000000000-7f4000001000 rw-p 00000000 00:00 0
7f4000002000-7f4000003000 rw-s 00000000 00:05 7 /dev/shm/my file (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00102000 r--p 00000000 00:00 0 [vvar]
7ffd00102000-7ffd00104000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""


def test_vma_ranges_merges_neighbours_and_skips_prot_none_and_kernel_pages():
    pg = lambda a: a // P  # noqa: E731
    r = vma_ranges(MAPS)
    # python's two mappings touch: one read.  The heap is 0xff0 pages away.
    assert r[0] == (pg(0x55d0c0000000), pg(0x10000))
    assert r[1] == (pg(0x55d0c1000000), pg(0x100000))
    # The 256 GiB PROT_NONE reservation is never read; the two small
    # mappings after it (one page apart, a name with spaces) are one read.
    assert r[2] == (pg(0x7f4000000000), 3)
    assert r[3] == (pg(0x7ffd00000000), 0x21)
    assert len(r) == 4       # no vvar, vdso, vsyscall
    assert MERGE_GAP_PAGES >= 1


def test_parse_stat_cgroup_and_trees():
    comm, rest = parse_stat("42 (we ird) name) S 1 42 42 0 -1 4194560 " + " ".join(["0"] * 12) + " 777 0")
    assert comm == "we ird) name" and rest[0] == "S" and rest[1] == "1" and rest[19] == "777"
    assert parse_cgroup("12:memory:/x\n0::/system.slice/a.service\n") == "/system.slice/a.service"
    assert parse_cgroup("0::/\n") == "/" and parse_cgroup("4:memory:/x\n") == ""
    t = lambda pid, ppid: TaskInfo(pid, ppid, "x", "S", 1, False)  # noqa: E731
    tasks = [t(1, 0), t(10, 1), t(11, 10), t(12, 11), t(20, 1)]
    assert descendants(tasks, {10}) == {10, 11, 12}
    assert descendants(tasks, {99}) == set()


def sample(**kw):
    rows = [system_analysis.ProcessUsage(100, "big", "/a", 300 << 20, 100 << 20, 1.0, 250 << 20, 80 << 20),
            system_analysis.ProcessUsage(200, "small", "/b", 10 << 20, 9 << 20, 1.0, 10 << 20, 9 << 20)]
    d = dict(backend="page_idle", granularity="page", time_s=1.0, window_s=1.0, processes=rows,
             cgroups=system_analysis.cgroup_usage_summed(rows), total_rss_bytes=310 << 20, total_wss_bytes=109 << 20,
             scan_s=0.25, frames=1234, new_processes=1, vanished=2)
    d.update(kw)
    return system_analysis.SystemSample(**d)


def test_top_frame_plain_and_json():
    s = sample()
    f = render.frame(s, sort="cold", n=0, pss=True, cgroups=True)
    text = render.plain(f)
    assert "backend page_idle (page)" in f.title
    assert "1 new process(es)" in text
    hdr = text.splitlines()[2]
    for col in ("PID", "COMM", "RSS(MiB)", "WSS(MiB)", "COLD(MiB)", "WSS%", "PSS(MiB)", "WSS_PSS(MiB)", "CGROUP"):
        assert col in hdr
    assert f.blocks[0].rows[0][:6] == ["100", "big", "300.00", "100.00", "200.00", "33.3"]
    assert f.blocks[1].rows[0][-1] == "/a"
    d = render.as_json(s, "wss", 1, True, 3)
    json.dumps(d)
    assert d["schema"] == "idlemap.top/1" and d["round"] == 3 and len(d["processes"]) == 1
    assert d["processes"][0]["cold_bytes"] == 200 << 20 and d["cgroups"][0]["cgroup"] == "/a"


# Per test, not for the module: a module-level importorskip would hide every
# test of this file, the ones that need no prometheus_client too.
needs_prometheus = pytest.mark.skipif(importlib.util.find_spec("prometheus_client") is None,
                                      reason="needs prometheus_client (pip install idlemap[exporter])")


@needs_prometheus
def test_exporter_families_come_from_the_current_sample_only():
    from prometheus_client import CollectorRegistry, generate_latest

    from idlemap.services.exporter import ExporterState, make_collector
    st = ExporterState("page_idle", "page", "10s")
    reg = CollectorRegistry(auto_describe=False)
    reg.register(make_collector(st, processes=True, cgroups=True, pss=True))
    text = generate_latest(reg).decode()
    assert 'idlemap_backend_info{backend="page_idle",granularity="page"' in text
    assert 'idlemap_scan_errors_total{reason="io"} 0.0' in text
    assert "idlemap_wss_bytes{" not in text          # nothing measured yet
    st.record(sample(denied=3, errors=["x"]))
    text = generate_latest(reg).decode()
    assert 'idlemap_wss_bytes{cgroup="/a",comm="big",pid="100"} 1.048576e+08' in text
    assert 'idlemap_cold_bytes{cgroup="/a",comm="big",pid="100"} 2.097152e+08' in text
    assert 'idlemap_wss_pss_bytes{cgroup="/a",comm="big",pid="100"}' in text
    assert 'idlemap_cgroup_processes{cgroup="/b"} 1.0' in text
    assert "idlemap_processes_unreadable 3.0" in text
    assert 'idlemap_scan_errors_total{reason="io"} 1.0' in text
    assert "idlemap_processes_vanished_total 2.0" in text
    # PID 100 exits: its label sets are gone at the next scrape.
    st.record(sample(processes=[sample().processes[1]], cgroups=[]))
    text = generate_latest(reg).decode()
    assert 'pid="100"' not in text and 'pid="200"' in text


@needs_prometheus
def test_exporter_top_n():
    from prometheus_client import CollectorRegistry, generate_latest

    from idlemap.services.exporter import ExporterState, make_collector
    st = ExporterState("clear_refs", "mapping", "30s")
    st.record(sample())
    reg = CollectorRegistry(auto_describe=False)
    reg.register(make_collector(st, top_n=1, sort="rss"))
    text = generate_latest(reg).decode()
    assert 'pid="100"' in text and 'pid="200"' not in text


@needs_prometheus
def test_exporter_cgroups_with_top_processes_and_interval_gauge():
    """--cgroups --top-processes N (the shipped setups): every group, and
    per-process series for the N largest only; the window is a gauge."""
    from prometheus_client import CollectorRegistry, generate_latest

    from idlemap.services.exporter import ExporterState, make_collector
    st = ExporterState("clear_refs", "mapping", "30s", interval_s=30.0)
    st.record(sample())
    reg = CollectorRegistry(auto_describe=False)
    reg.register(make_collector(st, processes=True, cgroups=True, process_top_n=1, sort="rss"))
    text = generate_latest(reg).decode()
    assert 'idlemap_cold_bytes{cgroup="/a",comm="big",pid="100"}' in text and 'pid="200"' not in text
    assert 'idlemap_cgroup_processes{cgroup="/b"} 1.0' in text
    assert "idlemap_interval_seconds 30.0" in text and "window=" not in text


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9466", ("127.0.0.1", 9466)), ("9466", ("127.0.0.1", 9466)),
    ("[::1]:9", ("::1", 9)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("localhost:1", ("localhost", 1))])
def test_parse_listen(text, want):
    from idlemap.services.exporter import parse_listen
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", [":9466", "host:", "1.2.3.4:70000", "a:b"])
def test_parse_listen_rejects(text):
    from idlemap.errors import UsageError
    from idlemap.services.exporter import parse_listen
    with pytest.raises(UsageError):
        parse_listen(text)


def test_is_loopback():
    from idlemap.services.exporter import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example")


@needs_prometheus
def test_guest_rows_in_exporter_top_and_json():
    from prometheus_client import CollectorRegistry, generate_latest

    from idlemap.analysis.system import GuestUsage
    from idlemap.services.exporter import ExporterState, make_collector
    g = GuestUsage(300, "qemu", "web1", "kvm", 4096 * MiB, 3000 * MiB, 1000 * MiB, 10.0)
    s = sample()
    s.guests = [g]
    st = ExporterState("page_idle", "page", "10s")
    st.record(s)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(make_collector(st, guests=True))
    text = generate_latest(reg).decode()
    assert 'idlemap_guest_wss_bytes{guest="web1",pid="300",vmm="qemu"} 1.048576e+09' in text
    assert 'idlemap_guest_cold_bytes{guest="web1",pid="300",vmm="qemu"} 2.097152e+09' in text
    assert 'idlemap_guest_ram_bytes{guest="web1",pid="300",vmm="qemu"} 4.294967296e+09' in text
    reg2 = CollectorRegistry(auto_describe=False)
    reg2.register(make_collector(st))               # not asked: no guest series
    assert "idlemap_guest_" not in generate_latest(reg2).decode()
    f = render.frame(s)
    vm = f.blocks[-1]
    assert vm.columns[0][0] == "VMM_PID" and vm.rows == [["300", "4096.00", "3000.00", "1000.00", "2000.00",
                                                          "kvm", "qemu web1"]]
    assert render.as_json(s, "wss", 0, False, 1)["guests"][0]["cold_bytes"] == 2000 * MiB


def test_guest_ram_mask_over_merged_runs():
    from idlemap.backends.system import _Run, _inside
    runs = [_Run(0x100, 0x10, 0), _Run(0x200, 0x20, 0x10)]        # pages 0x100.. and 0x200..
    m = _inside(runs, 0x30, [(0x108 << 12, 0x204 << 12)])
    assert np.flatnonzero(m).tolist() == list(range(8, 16)) + list(range(16, 20))
