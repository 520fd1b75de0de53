"""The kmod backend behind the one backend contract, in the test VM (real
6.1 kernel with page_idle, idlemap's module built against its tree and
loaded here): ``--backend auto`` picks kmod when the module is loaded and
page_idle when it is not, and says which; the system pass (top), the FUSE
mount's idle_bitmap and the actions (reclaim, tier) run on it.

Timing-free where exactness is asserted: mark -> the workload touches
exactly set X and acknowledges -> read.  The module flushes the TLB after
clearing accessed bits, so no soft-dirty flush is involved anywhere here.
"""
import json
import os

import numpy as np
import pytest

from idlemap.actions import ReclaimConfig, Reclaimer, TierConfig, Tierer
from idlemap.cli import main
from idlemap.kernel import kmod, numa
from idlemap.kernel import pagemap as pm
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.process import identify
from idlemap.testing.workload import Workload

from mounthelp import needs_pyfuse3
from wss_helpers import wss_first_line, wss_json

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(os.environ.get("IDLEMAP_IN_VM") != "1",
                                 reason="loads a kernel module: only in the test VM"),
              pytest.mark.skipif(not os.path.exists(BITMAP_PATH),
                                 reason="compares with page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB = 1 << 20


def _flushes() -> int:
    """TLB flushes the module has paid since load (its read-only counter)."""
    with open("/sys/module/idlemap_kmod/parameters/tlb_flushes") as f:
        return int(f.read())


def pages(mib):
    return int(mib * MiB) >> PAGE_SHIFT


@pytest.fixture
def unloaded(kmod_loaded):
    """The module out for one test, back in afterwards."""
    kmod.unload()
    try:
        yield
    finally:
        kmod.load(kmod_loaded)


def test_wss_auto_picks_kmod_when_loaded_and_says_so(kmod_loaded, capsys):
    with Workload() as w:
        w.map("data", 16, "nothp")
        w.touch("data")
        rows = wss_json(capsys, w.pid)
        assert [r["backend"] for r in rows] == ["kmod", "kmod"]
        assert all(r["tlb_exact"] and r["tlb_flush"] == "kmod" for r in rows)
        # The text form's first line says which and why.
        first = wss_first_line(capsys, w.pid)
    assert "with the kmod backend [the idlemap module is loaded" in first, first


def test_wss_auto_picks_page_idle_when_the_module_is_not_loaded(unloaded, capsys):
    with Workload() as w:
        w.map("data", 16, "nothp")
        w.touch("data")
        rows = wss_json(capsys, w.pid)
        first = wss_first_line(capsys, w.pid)
    assert [r["backend"] for r in rows] == ["page_idle", "page_idle"]
    assert "with the page_idle backend [page_idle, because kmod: the idlemap kernel module is not loaded" \
        in first, first


def test_doctor_reports_the_module(kmod_loaded, capsys):
    capsys.readouterr()
    assert main(["doctor", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["features"]["kmod_loaded"] is True
    assert d["kmod"].startswith("idlemap module: loaded")
    assert d["auto"].startswith("--backend auto here: the idlemap module is loaded")
    by = {c["command"]: c for c in d["commands"]}
    for cmd in ("wss", "bitmap", "top", "reclaim"):
        assert by[cmd]["works"] and "kmod" in by[cmd]["how"], by[cmd]


def test_top_system_pass_on_kmod_is_exact_per_process(kmod_loaded, capsys):
    """`idlemap top` on kmod: one walk per process; a process touching
    exactly 8 of its 32 MiB reads 8 MiB, one touching nothing reads ~0."""
    with Workload() as busy, Workload() as quiet:
        busy.map("data", 32, "nothp")
        quiet.map("data", 32, "nothp")
        busy.touch("data")
        quiet.touch("data")
        from idlemap.backends import choose_system
        from idlemap.backends.system import Selection
        sel = Selection(pids=frozenset({busy.pid, quiet.pid}))
        choice = choose_system("auto", selection=sel)
        assert choice.cls.name == "kmod" and "module is loaded" in choice.reason
        with choice.cls(sel) as sc:
            f0 = _flushes()
            sc.mark()
            f1 = _flushes()
            busy.touch("data", 1, 0, pages(8))
            s = sc.sample(remark=True)
            f2 = _flushes()
        # A Python process has ~170 mappings, walked one by one; their
        # flushes are deferred to the last walk: one TLB flush per process
        # marked (the module's own counter), not one per mapping.
        assert (f1 - f0, f2 - f1) == (2, 2)
        rows = {r.pid: r for r in s.processes}
        with capsys.disabled():         # the figures for the record (-s)
            print(json.dumps({"test": "top-kmod", "scan_s": round(s.scan_s, 4),
                              "rows": {str(p): [r.rss_bytes, r.wss_bytes] for p, r in rows.items()}}))
        assert s.backend == "kmod" and set(rows) == {busy.pid, quiet.pid}
        data = 32 * MiB
        assert rows[busy.pid].rss_bytes >= data and rows[quiet.pid].rss_bytes >= data
        # 8 MiB of data plus what the workload's interpreter touched to take the order.
        extra = rows[busy.pid].wss_bytes - 8 * MiB
        assert 0 <= extra < 4 * MiB, rows[busy.pid]
        assert rows[quiet.pid].wss_bytes < 4 * MiB, rows[quiet.pid]
        # And through the command: the JSON window names the backend and is flushed.
        capsys.readouterr()
        assert main(["top", "0.2", "1", "--json", "--pids", f"{busy.pid},{quiet.pid}"]) == 0
        win = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert win["backend"] == "kmod" and win["tlb_exact"] is True
    assert {p["pid"] for p in win["processes"]} == {busy.pid, quiet.pid}


def test_top_keeps_options_to_the_backends_that_take_them(kmod_loaded, capsys):
    assert main(["top", "0.1", "1", "--mark", "range", "--pids", str(os.getpid())]) == 2
    assert "--mark goes with the page_idle backend, not kmod" in capsys.readouterr().err


@needs_pyfuse3
def test_mount_serves_idle_bitmap_from_kmod(kmod_loaded):
    """The FUSE idle_bitmap on kmod, used as an RFC-era tool would: write
    all-ones over a mapping (mark), touch a known set, read: exactly the
    untouched pages read idle.  idle_pages and wss come from the same walk."""
    from mounthelp import Mount, word_range
    from idlemap.formats import idle_pages as ip
    m = Mount("--allow-other")
    try:
        assert m.info["backend"] == "kmod", m.info
        assert "module is loaded" in m.info["reason"]
        with Workload() as w:
            addr = w.map("a", 16, "nothp")
            npages = pages(16)
            w.touch("a", 1)
            off, size, lo = word_range(addr, 16 * MiB)
            fd = os.open(m.path(w.pid, "idle_bitmap"), os.O_RDWR)
            try:
                assert os.pwrite(fd, b"\xff" * size, off) == size       # mark
                w.touch("a", 4)                                          # pages 0, 4, 8, ...
                w.touch("a", 1, 1001, 100)                               # and 1001..1100
                words = np.frombuffer(os.pread(fd, size, off), dtype=np.uint64)
            finally:
                os.close(fd)
            bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
            first = (addr - lo) >> PAGE_SHIFT
            touched = np.zeros(npages, dtype=bool)
            touched[::4] = True
            touched[1001:1101] = True
            assert np.array_equal(bits[first:first + npages], ~touched)
            # idle_pages: the run-length stream of the same mapping.
            fd = os.open(m.path(w.pid, "idle_pages"), os.O_RDONLY)
            try:
                data = os.pread(fd, 1 << 20, addr)
            finally:
                os.close(fd)
            # Decoded back to bitmaps, the mapping reads as the idle_bitmap did.
            idle_w, present_w = ip.to_bitmaps(ip.decode(data), lo, lo + size * 8 * (1 << PAGE_SHIFT))
            idle_b = np.unpackbits(idle_w.view(np.uint8), bitorder="little").astype(bool)
            present_b = np.unpackbits(present_w.view(np.uint8), bitorder="little").astype(bool)
            assert present_b[first:first + npages].all()
            assert np.array_equal(idle_b[first:first + npages], ~touched)
            with open(m.path(w.pid, "wss")) as f:
                kv = dict(x.split("=", 1) for x in f.read().split())
            assert kv["backend"] == "kmod"
    finally:
        rc = m.stop()
        log = m.log_text()
        m.cleanup()
    assert rc == 0, log


def test_reclaim_runs_on_kmod_and_pages_out_the_cold_set(kmod_loaded, zram_swap):
    total, hot = pages(64), pages(16)
    with Workload() as w:
        a = w.map("data", 64, "nothp")
        w.touch("data")
        checksum = w.sum("data")
        cfg = ReclaimConfig(cold_for=2, mode="pageout", ranges=[(a, a + 64 * MiB)])
        with Reclaimer(identify(w.pid), cfg) as eng:
            assert eng.rounds.scanner.backend_name == "kmod"
            assert eng.rounds.tlb.exact and eng.rounds.tlb.flush == "kmod"
            eng.start()
            rounds = []
            for _ in range(4):
                w.touch("data", 1, 0, hot)
                rounds.append(eng.round())
        with pm.Pagemap(w.pid) as p:
            e = p.read(a >> PAGE_SHIFT, total)
        present = (e & pm.PRESENT) != 0
        assert w.sum("data") == checksum
    print(json.dumps({"test": "reclaim-kmod", "advised": [r.advised_pages for r in rounds],
                      "cold_out_pct": 100.0 * np.count_nonzero(~present[hot:]) / (total - hot),
                      "hot_resident_pct": 100.0 * np.count_nonzero(present[:hot]) / hot}))
    assert present[:hot].all()
    assert np.count_nonzero(~present[hot:]) >= 0.9 * (total - hot)


def test_reclaim_command_on_kmod(kmod_loaded, zram_swap, capsys):
    with Workload() as w:
        w.map("data", 8, "nothp")
        w.touch("data")
        capsys.readouterr()
        rc = main(["reclaim", str(w.pid), "--cold-for", "1", "--dry-run", "--count", "2", "--json"])
        out = capsys.readouterr().out
    assert rc == 0, out


def test_tier_runs_on_kmod(kmod_loaded):
    nodes = numa.online_nodes()
    if len(nodes) < 2:
        pytest.skip("one NUMA node: boot the VM with --numa 2 (CONFIG_NUMA, ACPI_NUMA)")
    fast, slow = nodes[:2]
    total, hot = pages(32), pages(8)
    with Workload() as w:
        a = w.map("data", 32, "nothp")
        w.bind("data", slow, 0, hot)              # the hot quarter starts on the slow node
        w.bind("data", fast, hot, total - hot)    # the cold rest on the fast one
        w.touch("data")
        cfg = TierConfig(fast=fast, slow=slow, hot_rounds=2, cold_rounds=2, ranges=[(a, a + 32 * MiB)])
        with Tierer(identify(w.pid), cfg) as eng:
            assert eng.rounds.scanner.backend_name == "kmod"
            eng.start()
            for _ in range(4):
                w.touch("data", 1, 0, hot)
                eng.round()
        where = numa.move_pages(w.pid, a + (np.arange(total, dtype=np.uint64) << PAGE_SHIFT))
    print(json.dumps({"test": "tier-kmod", "hot_on_fast": int(np.count_nonzero(where[:hot] == fast)),
                      "cold_on_slow": int(np.count_nonzero(where[hot:] == slow)), "pages": total}))
    assert np.count_nonzero(where[:hot] == fast) >= 0.95 * hot
    assert np.count_nonzero(where[hot:] == slow) >= 0.95 * (total - hot)


def test_bitmap_command_on_kmod(kmod_loaded, tmp_path, capsys):
    with Workload() as w:
        w.map("data", 4, "nothp")
        w.touch("data")
        out = tmp_path / "b"
        capsys.readouterr()
        assert main(["bitmap", str(w.pid), "--wait", "0.1", "-o", str(out), "--json"]) == 0
        meta = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert meta["backend"] == "kmod" and meta["tlb_exact"] is True and meta["present_pages"] > 0
