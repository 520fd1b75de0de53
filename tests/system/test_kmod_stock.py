"""Debian 12's stock kernels: linux-image-6.1.0-N-amd64 (no page_idle, no
DAMON) and linux-image-6.12.N+deb12-amd64 (DAMON, no page_idle), so
idlemap's module is the only way to per-page tracking there.  Run by
``scripts/test.sh kmod-stock`` in one VM per kernel (``python -m
idlemap.testvm --kernel stock-6.1`` / ``stock-6.12``, idlemap/testvm/stock.py,
with IDLEMAP_STOCK_DIR naming the kernel's cache directory); the module is
built beforehand on the host against the matching linux-headers package and
found in the cache the guest sees.

Exactness is asserted two ways: ``idlemap wss --backend kmod`` on a C loop
that never pauses (every hot page written many times per window, the cold
ones never again) reads exactly the hot set in every window, and a bitmap
read through the module is bit for bit the pages a controlled workload was
told to touch (no clock involved).  Any splat in the kernel log
(kernel_log.SPLAT: BUG, WARNING, Oops...) fails the test that caused it
(conftest.py's kmod_kernel_log), and the whole boot's log is checked at the
end.  The module is loaded by conftest.py's kmod_loaded.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from idlemap.kernel import kmod, page_idle
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE
from idlemap.kmodbitmap import KmodBitmap
from idlemap.testing.workload import Workload

from fleet_helpers import hot_loop
from kernel_log import since_boot, splats
from kvm_helpers import KvmGuest, kvm_usable_reason

pytestmark = [pytest.mark.kmod_stock, pytest.mark.skipif(
    os.environ.get("IDLEMAP_IN_STOCK_VM") != "1",
    reason="needs Debian's stock kernel in the VM: scripts/test.sh kmod-stock")]

MiB = 1 << 20
# The hot set of the wss test: at 4 KiB pages (hotset.c asks MADV_NOHUGEPAGE).
HOT_MIB, COLD_MIB = 64, 32


def pages(mib):
    return int(mib * MiB) >> PAGE_SHIFT


def stock_dir() -> Path:
    """The running kernel's cache directory (stock-kernel.sh), seen over 9p."""
    d = Path(os.environ["IDLEMAP_STOCK_DIR"])
    assert (d / "release").read_text().strip() == os.uname().release, d
    return d


def stock_config() -> str:
    """The running kernel's config, as its image package ships it."""
    return (stock_dir() / "config").read_text()


def series() -> str:
    """6.1 or 6.12, from the release (6.1.0-N-amd64, 6.12.N+deb12-amd64)."""
    m = re.fullmatch(r"(6\.1)\.0-\d+-amd64|(6\.12)\.\d+\+deb12-amd64", os.uname().release)
    assert m, os.uname().release
    return m.group(1) or m.group(2)


def config_value(cfg: str, name: str) -> str:
    """y, m, a value, or "" for `# CONFIG_X is not set` and absent."""
    m = re.search(rf"^CONFIG_{name}=(.*)$", cfg, re.MULTILINE)
    return m.group(1) if m else ""


# What each stock kernel's config says, asserted and printed (docs/kmod.md).
FACTS = ("IDLE_PAGE_TRACKING", "DAMON", "DAMON_VADDR", "DAMON_PADDR", "DAMON_SYSFS", "PSI",
         "PSI_DEFAULT_DISABLED", "MEMCG", "MEM_SOFT_DIRTY", "NUMA", "TRANSPARENT_HUGEPAGE",
         "HUGETLBFS", "HUGETLB_PAGE", "MODULES", "MODULE_SIG", "MODULE_SIG_FORCE")
EXPECTED = {
    "6.1": {"IDLE_PAGE_TRACKING": "", "DAMON": "", "DAMON_VADDR": "", "DAMON_PADDR": "",
            "DAMON_SYSFS": ""},
    "6.12": {"IDLE_PAGE_TRACKING": "", "DAMON": "y", "DAMON_VADDR": "y", "DAMON_PADDR": "y",
             "DAMON_SYSFS": "y"},
}
COMMON = {"PSI": "y", "PSI_DEFAULT_DISABLED": "", "MEMCG": "y", "MEM_SOFT_DIRTY": "y", "NUMA": "y",
          "TRANSPARENT_HUGEPAGE": "y", "HUGETLBFS": "y", "HUGETLB_PAGE": "y", "MODULES": "y",
          "MODULE_SIG": "y", "MODULE_SIG_FORCE": ""}


def test_this_is_the_stock_kernel_without_page_idle():
    rel, ser = os.uname().release, series()
    cfg = stock_config()
    got = {k: config_value(cfg, k) for k in FACTS}
    want = {**COMMON, **EXPECTED[ser]}
    assert {k: got[k] for k in want} == want, got
    assert not os.path.exists(page_idle.PATH) and not page_idle.available()
    # what the config promises is there at run time
    assert os.path.isdir("/sys/kernel/mm/damon/admin") == (ser == "6.12")
    with open("/proc/pressure/memory") as f:       # PSI on (not default-disabled)
        assert f.read().startswith("some ")
    assert os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB")
    # guest-init does not mount securityfs; the lockdown LSM reports there
    if not os.path.exists("/sys/kernel/security/lockdown"):
        subprocess.run(["mount", "-t", "securityfs", "securityfs", "/sys/kernel/security"], check=True)
    with open("/sys/kernel/security/lockdown") as f:
        assert "[none]" in f.read()
    print(f"\n{rel}: " + ", ".join(f"{k}={v or 'n'}" for k, v in got.items())
          + f"; no {page_idle.PATH}; lockdown none")


def test_damos_quota_goals_on_6_12():
    """6.12's DAMON has DAMOS quota goals, with the metrics user_input and
    some_mem_psi_us (memory PSI): set one up through sysfs (not started),
    read it back, remove it.  On 6.1 there is no DAMON at all."""
    if series() != "6.12":
        assert not os.path.exists("/sys/kernel/mm/damon")
        return
    admin = Path("/sys/kernel/mm/damon/admin/kdamonds")

    def put(rel, value):
        (admin / rel).write_text(f"{value}\n")

    put("nr_kdamonds", 1)
    try:
        put("0/contexts/nr_contexts", 1)
        put("0/contexts/0/schemes/nr_schemes", 1)
        q = "0/contexts/0/schemes/0/quotas"
        put(f"{q}/goals/nr_goals", 1)
        put(f"{q}/goals/0/target_metric", "some_mem_psi_us")
        put(f"{q}/goals/0/target_value", 1000)
        assert (admin / q / "goals/0/target_metric").read_text().strip() == "some_mem_psi_us"
        assert (admin / q / "goals/0/target_value").read_text().strip() == "1000"
        actions = []
        for a in ("pageout", "lru_prio", "lru_deprio", "migrate_hot", "migrate_cold", "stat"):
            try:
                put("0/contexts/0/schemes/0/action", a)
                actions.append(a)
            except OSError:
                pass
        with pytest.raises(OSError):
            put(f"{q}/goals/0/target_metric", "node_mem_used_bp")     # later kernels
    finally:
        put("nr_kdamonds", 0)
    print(f"\nDAMOS quota goal some_mem_psi_us accepted; actions accepted: {' '.join(actions)}")
    assert actions == ["pageout", "lru_prio", "lru_deprio", "migrate_hot", "migrate_cold", "stat"]


GIANT = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"


def test_hugetlb_1gib_page_reads_whole(kmod_loaded):
    """A 1 GiB hugetlb page (a PUD entry; allocated at run time, which needs
    CONFIG_CONTIG_ALLOC: the stock kernels have it, the test kernel not):
    its 262 144 bits read accessed or idle together, also across the
    module's 128 MiB chunks (8 per huge page, mmap_lock dropped between
    them), in read-and-re-mark windows: one touched page, none, the last.
    The kmod-stock phase reserves the page at boot (a free aligned 1 GiB
    run at run time is not always there: 6.12 failed to find one three
    times); this test still runs first of the module tests."""
    n = pages(1024)
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    with open("/proc/sys/vm/compact_memory", "w") as f:
        f.write("1")
    with open(GIANT, "w") as f:
        f.write("1")
    try:
        with open(GIANT) as f:
            assert int(f.read()) == 1, "no 1 GiB page (scripts/test.sh boots with hugepagesz=1G hugepages=1 and --mem 3072)"
        with Workload() as w:
            a = w.map("g", 1024, "hugetlb1g")
            assert a % (1 << 30) == 0
            w.touch("g", 1, 5, 1)                           # faults the whole page in
            rng = [(a, a + 1024 * MiB)]
            got = []
            with KmodBitmap(w.pid) as km:
                km.mark_idle(rng)
                for first in (200_000, None, n - 1):
                    if first is not None:
                        w.touch("g", 1, first, 1)
                    m = km.read(rng, remark=True)
                    s = next(s for s in m.spans if s.start <= a < s.end)
                    v = slice(s.offset + ((a - s.start) >> PAGE_SHIFT),
                              s.offset + ((a - s.start) >> PAGE_SHIFT) + n)
                    assert m.present[v].all() and m.huge[v].all()
                    acc = int(m.accessed[v].sum())
                    assert acc == (n if first is not None else 0), (first, acc)
                    got.append(acc)
    finally:
        with open(GIANT, "w") as f:
            f.write("0")
    print(f"\n1 GiB hugetlb page, {n} bits: accessed per window {got}")


def test_module_loads_unsigned_and_out_of_tree(kmod_loaded):
    assert os.path.exists(kmod.DEVICE)
    with open("/sys/module/idlemap_kmod/taint") as f:
        taint = f.read().strip()
    # E: unsigned (MODULE_SIG=y but not forced), O: out of tree
    assert set(taint) >= {"E", "O"}, taint
    r = subprocess.run([sys.executable, "-m", "idlemap", "kmod", "status", "--json"],
                       stdout=subprocess.PIPE, text=True, check=True)
    assert json.loads(r.stdout)["loaded"]
    print(f"\nmodule taint {taint}")


def test_wss_backend_kmod_is_exact_on_a_loop_that_never_pauses(kmod_loaded):
    """`idlemap wss --backend kmod PID 0.5 4 --json --by-mapping` on hotset.c
    pinned to CPU 0 (its translations never leave CPU 0's TLB; we run on
    CPU 1): the data mapping reads exactly HOT_MIB in every window."""
    with hot_loop(HOT_MIB, COLD_MIB, "pinned") as w:
        p0 = w.passes()
        r = subprocess.run([sys.executable, "-m", "idlemap", "wss", "--backend", "kmod", str(w.pid),
                            "0.5", "4", "--json", "--by-mapping", "--top", "50"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        passes = w.passes() - p0
    assert r.returncode == 0, r.stderr
    windows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    windows = [d for d in windows if "by_mapping" in d]
    assert len(windows) == 4, r.stdout
    # Meaningful only if the loop passed over the hot set several times per
    # window (it cannot miss a page then); measured, not assumed.
    assert passes >= 4 * 4, f"only {passes} passes over the hot set in 4 windows"
    got = []
    for d in windows:
        assert d["backend"] == "kmod"
        data = [m for m in d["by_mapping"] if int(m["start"], 16) <= w.addr < int(m["end"], 16)]
        assert len(data) == 1, d["by_mapping"]
        assert data[0]["rss_bytes"] == (HOT_MIB + COLD_MIB) * MiB
        got.append(data[0]["wss_bytes"])
    print(f"\nhot set {HOT_MIB} MiB of {HOT_MIB + COLD_MIB} MiB, {passes} passes in 4 windows; "
          f"data mapping wss_bytes per window: {[g / MiB for g in got]} MiB; "
          f"process: {[round(d['wss_bytes'] / MiB, 2) for d in windows]} MiB")
    assert got == [HOT_MIB * MiB] * 4


def test_bitmap_is_bit_for_bit_the_touched_pages(kmod_loaded):
    """Timing-free: mark -> tell the workload to touch exactly set X -> wait
    for its ack -> read.  Five windows with different patterns (strided,
    ranges, none, all), each read and re-marked in one walk; the RFC pread
    layout of the last agrees; holes are neither present nor idle."""
    n = pages(16)
    with Workload() as w:
        a = w.map("a", 16, "nothp")
        hole = w.map("h", 1, "nothp")          # never touched: holes
        w.touch("a")
        rng = [(a, a + 16 * MiB), (hole, hole + MiB)]
        patterns = [[(3, 0, 0)], [(1, 100, 500), (7, 2000, 1000)], [], [(1, 0, 0)], [(5, 1, 0)]]
        results = []
        with KmodBitmap(w.pid) as km:
            km.mark_idle(rng)
            for pat in patterns:
                want = np.zeros(n, bool)
                for step, first, count in pat:
                    w.touch("a", step, first, count)
                    want[first:first + count if count else n:step] = True
                m = km.read(rng, remark=True)
                s = next(s for s in m.spans if s.start <= a < s.end)
                off = s.offset + ((a - s.start) >> PAGE_SHIFT)
                got = m.accessed[off:off + n]
                assert m.present[off:off + n].all()
                diff = np.flatnonzero(got != want)
                assert diff.size == 0, f"pattern {pat}: pages {diff[:10].tolist()} differ"
                h = next((s for s in m.spans if s.start <= hole < s.end), None)
                if h is not None:
                    hv = slice(h.offset + ((hole - h.start) >> PAGE_SHIFT),
                               h.offset + ((hole - h.start) >> PAGE_SHIFT) + pages(1))
                    assert not m.present[hv].any() and not m.idle[hv].any()
                results.append(int(want.sum()))
            # The RFC layout (whole words inside the mapping: nothing else
            # can touch them), after the last window's re-mark: all idle.
            lo = -(-a // (64 * PAGE_SIZE)) * 64 * PAGE_SIZE
            hi = lo + 8 * MiB
            words = (hi - lo) // (64 * PAGE_SIZE)
            rfc = np.frombuffer(km.dev.pread(words * 8, (lo >> PAGE_SHIFT) // 8), np.uint64)
            m = km.read([(lo, hi)])
    want_idle, _ = m.rfc_words(lo, hi, holes_idle=False)
    assert np.array_equal(rfc, want_idle)
    assert (rfc == np.uint64(2**64 - 1)).all()
    print(f"\n{n} pages, 5 windows, accessed pages {results}: bit for bit")


def test_actions_refuse_a_kvm_guest_only_the_module_could_read(kmod_loaded, cgroup_dir):
    """No page_idle here, so for a KVM guest's VMM the only per-page backend
    is the module, which reads the guest's working set idle
    (test_kvm_guest_vm.py measures that).  `wss` runs and says what it
    misses; `reclaim PID` and `reclaim --cgroup` with the VMM as a member
    refuse in one sentence, exit 69, and the guest's memory stays resident.
    (`tier` takes the same path, PageRounds; this VM has one NUMA node, so
    it stops earlier, at its node check.)  kvmguest runs a real KVM guest
    (the VM loads kvm_amd: stock-kernel.sh)."""
    assert kvm_usable_reason() is None, kvm_usable_reason()
    idlemap = [sys.executable, "-m", "idlemap"]
    with KvmGuest(1024) as g:
        g.passes(2)
        r = subprocess.run([*idlemap, "wss", str(g.pid), "0.2", "1"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        first = r.stdout.splitlines()[0]
        assert "kmod, though it cannot see a KVM guest's accesses" in first, first
        with open(f"{cgroup_dir}/cgroup.procs", "w") as f:
            f.write(str(g.pid))
        for action in (["reclaim", str(g.pid), "--cold-for", "1"],
                       ["reclaim", "--cgroup", cgroup_dir, "--count", "1"]):
            r = subprocess.run([*idlemap, *action], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=120)
            assert r.returncode == 69, (action, r.stdout, r.stderr)
            err = r.stderr.strip()
            assert "\n" not in err and "Traceback" not in err, err
            assert f"process {g.pid} runs a KVM guest" in err and "refusing to page out or move" in err, err
            assert "CONFIG_IDLE_PAGE_TRACKING" in err, err
            print(f"\n{action[0]}: {err}")
        with open(f"/proc/{g.pid}/pagemap", "rb") as f:
            f.seek((g.start >> PAGE_SHIFT) * 8)
            e = np.frombuffer(f.read(g.pages * 8), np.uint64)
        assert int(np.count_nonzero(e >> np.uint64(63))) == g.pages       # all still resident
        g.more_passes(2)                                                   # and the guest runs on
        g.close()                     # before the fixture removes the group


def test_no_splat_since_boot():
    """Last: the whole kernel log, boot and module load included."""
    log = since_boot()
    assert not splats(log), "kernel splat:\n" + "\n".join(splats(log)[:40])
    assert any("idlemap" in ln for ln in log)
