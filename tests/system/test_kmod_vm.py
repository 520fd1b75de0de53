"""idlemap's kernel module (kmod/) in the test VM: built against the VM
kernel's tree, loaded, and checked against page_idle on the same workloads.

Timing-free where exactness is asserted: mark -> tell the workload to touch
exactly set X -> wait for its ack -> read -> compare bit for bit.  Every
test fails if the kernel logged a splat meanwhile (kernel_log.SPLAT: BUG,
WARNING, Oops, and on the debug kernel KASAN and lockdep reports), or if
lockdep turned itself off.  scripts/test.sh runs this file in the vm phase
and again on the debug kernel (kmod-debug).  The fuzzer is test_kmod_fuzz.py.
"""
import ctypes
import errno
import mmap
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from idlemap.bitmap import HPAGE_PAGES, IdleBitmap
from idlemap.errors import NoSuchProcess, TargetExited
from idlemap.kernel import kmod
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE, read_maps
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.tasks import read_task
from idlemap.kmodbitmap import KmodBitmap
from idlemap.testing.workload import Workload

from kernel_log import Kmsg

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    os.environ.get("IDLEMAP_IN_VM") != "1", reason="loads a kernel module: only in the test VM")]

MiB = 1 << 20


def pages(mib):
    return int(mib * MiB) >> PAGE_SHIFT


@pytest.fixture(autouse=True)
def with_module(kmod_loaded):
    """Every test runs with the module loaded (conftest.py's kmod_loaded).
    The kernel log is checked around each by conftest.py's kmod_kernel_log."""


def assert_same_bits(mk, mp):
    """The module's IdleMap `mk` and page_idle's `mp` of the same moment:
    the same spans, and present, idle, huge and swapped equal bit for bit."""
    assert [(s.start, s.end) for s in mk.spans] == [(s.start, s.end) for s in mp.spans]
    for name in ("present", "idle", "huge", "swapped"):
        got, want = getattr(mk, name), getattr(mp, name)
        assert np.array_equal(got, want), f"{name}: {np.flatnonzero(got != want)[:10].tolist()} differ"


def span_view(m, addr, npages):
    s = next(s for s in m.spans if s.start <= addr < s.end)
    off = s.offset + ((addr - s.start) >> PAGE_SHIFT)
    return slice(off, off + npages)


def wait_zombie(pid: int, timeout_s: float = 10.0) -> None:
    """Until our exited child PID is a zombie (state Z in /proc/PID/stat,
    after the parenthesised comm): its task is there, its mm is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = read_task(pid)
        if task is not None and task.state == "Z":
            return
        time.sleep(0.01)
    pytest.fail(f"PID {pid} did not become a zombie in {timeout_s} s")


def test_kmsg_watch_sees_new_records():
    """The splat check itself works: a record written now is read back."""
    k = Kmsg()
    with open("/dev/kmsg", "w") as f:
        f.write("idlemap-test: kmsg probe\n")
    assert any("idlemap-test: kmsg probe" in ln for ln in k.read())


def test_device_is_root_only_and_versioned(kmod_loaded):
    st = os.stat(kmod.DEVICE)
    assert st.st_mode & 0o777 == 0o600
    with kmod.Device() as d:
        import fcntl
        assert fcntl.ioctl(d.fd, kmod.IOC_VERSION) == kmod.API_VERSION
    # An unprivileged process (uid nobody, no capabilities) gets EPERM, even
    # if the file mode let it in: open() checks CAP_SYS_ADMIN.
    os.chmod(kmod.DEVICE, 0o666)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    os.close(os.open(kmod.DEVICE, os.O_RDWR))
                    os._exit(0)
                except OSError as e:
                    os._exit(e.errno)
            finally:
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == errno.EPERM
    finally:
        os.chmod(kmod.DEVICE, 0o600)


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_bit_for_bit_equal_to_flushed_page_idle(thp):
    """The same marks and touches seen through page_idle (flushed with
    clear_refs=4) and through the module: identical present/idle/huge bits
    over the workload's mappings, and the RFC pread layout agrees."""
    assert os.path.exists(BITMAP_PATH)
    opt = "thp" if thp else "nothp"
    step = 3 * HPAGE_PAGES if thp else 3
    with Workload() as w:
        a = w.map("a", 16, opt)          # every `step`-th page touched
        b = w.map("b", 8, opt)           # all touched
        c = w.map("c", 8, opt)           # none touched
        d = w.map("d", 4, opt)           # never faulted in: holes
        for n in "abc":
            w.touch(n)
        ranges = [(x, x + mib * MiB) for x, mib in ((a, 16), (b, 8), (c, 8), (d, 4))]
        with IdleBitmap(w.pid, tlb_flush="soft-dirty") as pi, KmodBitmap(w.pid) as km:
            km.mark_idle(ranges)
            pi.mark_idle(ranges)
            w.touch("a", step)
            w.touch("b")
            mk = km.read(ranges)         # first: page_idle's read clears accessed bits
            lo = a & ~(64 * PAGE_SIZE - 1)
            hi = a + 16 * MiB
            words = -(-(hi - lo) // (64 * PAGE_SIZE))        # whole words, as rfc_words
            rfc_idle = np.frombuffer(km.dev.pread(words * 8, (lo >> PAGE_SHIFT) // 8), np.uint64)
            km.dev.set_mode(kmod.MODE_PRESENT)
            rfc_present = np.frombuffer(km.dev.pread(words * 8, (lo >> PAGE_SHIFT) // 8), np.uint64)
            km.dev.set_mode(kmod.MODE_IDLE)
            mp = pi.read(ranges)
    assert_same_bits(mk, mp)
    na = pages(16)
    sa, sd = span_view(mk, a, na), span_view(mk, d, pages(4))
    if thp:
        assert mk.huge[sa].all()
    want_a = len(range(0, na, step)) if not thp else len(range(0, na // HPAGE_PAGES, 3)) * HPAGE_PAGES
    assert int(mk.accessed[sa].sum()) == want_a
    assert not mk.present[sd].any() and not mk.idle[sd].any()
    # The RFC layout: holes read 0 in the idle bitmap, the present bitmap tells them apart.
    want_i, want_p = mk.rfc_words(lo, hi, holes_idle=False)
    assert np.array_equal(rfc_idle, want_i) and np.array_equal(rfc_present, want_p)
    print(f"\n{'thp' if thp else '4k'}: {int(mk.present.sum())} present, "
          f"{int(mk.accessed.sum())} accessed pages: equal to page_idle bit for bit")


def test_deferred_flush_read_in_two_walks_reads_the_hot_loop_hot():
    """IDLEMAP_WALK_NOFLUSH: a re-marking read in two walks, the hot set's
    deferred and the cold set's flushing for both (as KmodBitmap reads
    several clusters), reads every hot page accessed in every window; so
    does a deferred walk paid by an error, or by closing the fd."""
    from fleet_helpers import HotSet
    if os.cpu_count() < 2:
        pytest.skip("needs 2 CPUs (the VM has 2)")
    hp = pages(2)
    os.sched_setaffinity(0, {0})
    try:
        with HotSet(2, 8) as hs:
            os.sched_setaffinity(hs.pid, {1})
            hot, cold = (hs.addr, hs.addr + 2 * MiB), (hs.addr + 2 * MiB, hs.addr + 10 * MiB)
            idle = np.zeros(hp // 64, np.uint64)
            misses, stale = [], []
            time.sleep(0.3)
            with kmod.Device(hs.pid) as d:
                d.walk(*hot, clear=True, defer_flush=True)
                d.walk(*cold, clear=True)
                for _ in range(6):
                    time.sleep(0.3)
                    _, n_idle = d.walk(*hot, idle=idle, clear=True, defer_flush=True)
                    d.walk(*cold, clear=True)              # the read's one flush
                    misses.append(n_idle)
                # an error after a deferred walk pays its flush
                d.walk(*hot, clear=True, defer_flush=True)
                import fcntl
                bad = bytearray(kmod._WALK.pack(1, PAGE_SIZE, 0, 0, 0, 0, 0, 0, 0, 0, 0))
                with pytest.raises(OSError):
                    fcntl.ioctl(d.fd, kmod.IOC_WALK, bad, True)
                time.sleep(0.3)
                misses.append(d.walk(*hot, clear=True, defer_flush=True)[1])
                # what deferring means: a second deferred walk, no flush between
                time.sleep(0.3)
                stale.append(d.walk(*hot, clear=True, defer_flush=True)[1])
            # closed with a flush owed: close pays it
            time.sleep(0.3)
            with kmod.Device(hs.pid) as d:
                misses.append(d.walk(*hot, clear=True)[1])
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    print(f"\nhot pages ({hp}) read idle: {misses}; after a deferred walk with no flush since: {stale}")
    assert misses == [0] * 8


FLUSHES = "/sys/module/idlemap_kmod/parameters/tlb_flushes"


def _flushes() -> int:
    with open(FLUSHES) as f:
        return int(f.read())


def _cal(cpu: int) -> int:
    """Function-call IPIs CPU `cpu` has taken (the CAL row of
    /proc/interrupts): what the kernel itself counts of our flushes."""
    with open("/proc/interrupts") as f:
        for line in f:
            if line.lstrip().startswith("CAL:"):
                return int(line.split()[1 + cpu])
    raise AssertionError("no CAL row in /proc/interrupts")


def test_one_tlb_flush_per_read_of_a_process_in_several_clusters():
    """KmodBitmap reads a process in one walk per cluster of mappings and
    defers every flush but the last (IDLEMAP_WALK_NOFLUSH): one flush per
    read.  Counted twice: by the module (its read-only tlb_flushes counter:
    exactly N for N reads) and by the kernel (the CAL IPIs of the target's
    CPU: at least N, since every flush interrupts it, and fewer than 2N).
    Control, on the same process: the same walks each paying its own flush
    (the code before API 2) cost one flush per cluster, and the kernel counts
    at least that many IPIs -- so the observation can tell the two apart."""
    from fleet_helpers import HotSet
    if os.cpu_count() < 2:
        pytest.skip("needs 2 CPUs (the VM has 2)")
    n = 20
    os.sched_setaffinity(0, {1})
    try:
        with HotSet(2, 8) as hs:
            os.sched_setaffinity(hs.pid, {0})       # it never leaves CPU 0: in mm_cpumask there
            time.sleep(0.3)
            with KmodBitmap(hs.pid) as bm:
                bm.mark_idle()
                groups = bm._layout.groups
                assert len(groups) >= 3, "hotset maps fewer than 3 clusters: nothing to defer"
                f0, c0 = _flushes(), _cal(0)
                for _ in range(n):
                    m = bm.read(remark=True)
                f1, c1 = _flushes(), _cal(0)
                assert m.present.sum() > 0
                # control: one flushing walk per cluster, as before API 2
                for _ in range(n):
                    for g in groups:
                        bm.dev.walk(g.start, g.end, *g.rows, clear=True)
                f2, c2 = _flushes(), _cal(0)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    k = len(groups)
    print(f"\n{n} reads of {k} clusters: module flushes {f1 - f0}, CAL IPIs on the target's CPU {c1 - c0}; "
          f"one flush per walk: flushes {f2 - f1}, CAL {c2 - c1}")
    assert f1 - f0 == n
    assert n <= c1 - c0 < 2 * n
    assert f2 - f1 == n * k
    assert c2 - c1 >= n * k


def test_sparse_terabyte_reservation_read_exactly():
    """1 TiB of MAP_NORESERVE with a few pages here and there: the walk
    skips the empty PUD/PMD entries (one check each) and still reads every
    page exactly, its bitmaps zero between them."""
    import ctypes
    import mmap as mm
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    tib = 1 << 40
    addr = libc.mmap(None, tib, mm.PROT_READ | mm.PROT_WRITE,
                     mm.MAP_PRIVATE | mm.MAP_ANONYMOUS | 0x4000, -1, 0)     # MAP_NORESERVE
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        assert libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(tib), 15) == 0   # MADV_NOHUGEPAGE
        offs = [0, 5 << 30 | 3 << 12, (5 << 30) + (130 << 20), 300 << 30, (1 << 39) - PAGE_SIZE,
                1 << 39, tib - PAGE_SIZE] + [(7 << 30) - (1 << 20) + i * PAGE_SIZE for i in range(512)]
        for o in offs:
            ctypes.memset(addr + o, 1, 1)
        n = tib >> PAGE_SHIFT
        idle, present = np.zeros(n // 64, np.uint64), np.zeros(n // 64, np.uint64)
        with kmod.Device(os.getpid()) as d:
            assert d.walk(addr, addr + tib, clear=True)[0] == len(offs)
            touched = offs[1::2]
            for o in touched:
                ctypes.memset(addr + o, 2, 1)
            idle[:] = ~np.uint64(0)                     # the module writes every word
            present[:] = ~np.uint64(0)
            n_present, n_idle = d.walk(addr, addr + tib, idle=idle, present=present)
        def bits(words):                                # set bits of the few nonzero words
            nz = np.flatnonzero(words)
            b = np.unpackbits(words[nz].view(np.uint8), bitorder="little").reshape(-1, 64)
            r, c = np.nonzero(b)
            return nz[r] * 64 + c
        got_p, got_i = bits(present), bits(idle)
        want_p = sorted(o >> PAGE_SHIFT for o in offs)
        want_i = sorted(set(want_p) - {o >> PAGE_SHIFT for o in touched})
        assert (n_present, n_idle) == (len(offs), len(want_i))
        assert got_p.tolist() == want_p
        assert got_i.tolist() == want_i
        # One system call each: a walk with no bitmap to fill is bounded by
        # the pages it walks and the empty entries it checks, not by address
        # space, so counting a terabyte's pages (what KmodBitmap does for a
        # big PROT_NONE reservation every read) is one call.  With a bitmap
        # the zeroing is work: 8 GiB per call, as before.
        import fcntl
        def one_call(flags, idle_ptr=0):
            arg = bytearray(kmod._WALK.pack(addr, addr + tib, idle_ptr, 0, 0, 0, flags, 0, 0, 0, 0))
            with kmod.Device(os.getpid()) as d:
                fcntl.ioctl(d.fd, kmod.IOC_WALK, arg, True)
            return kmod._WALK.unpack(arg)[-3:]
        assert one_call(kmod.WALK_CLEAR) == (addr + tib, len(offs), len(want_i))
        assert one_call(0) == (addr + tib, len(offs), len(offs))
        assert one_call(0, idle.ctypes.data)[0] == addr + (8 << 30)
    finally:
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(tib))


def test_walk_cut_short_by_empty_entry_checks_continues_exactly():
    """A walk with no bitmap may check at most 16 Ki empty entries per call.
    40 GiB of MAP_NORESERVE with one THP faulted in per GiB and then
    dropped (MADV_DONTNEED) leaves a PMD table per GiB whose 512 entries are
    all none: ~20 Ki checks, so the count-only walk takes more than one call
    (when the THPs were huge; printed), and the calls together still count
    exactly the 4K pages faulted in afterwards."""
    import ctypes
    import fcntl
    import mmap as mm
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    gib, n = 1 << 30, 40
    size = n * gib
    raw = libc.mmap(None, size + gib, mm.PROT_READ | mm.PROT_WRITE,
                    mm.MAP_PRIVATE | mm.MAP_ANONYMOUS | 0x4000, -1, 0)     # MAP_NORESERVE
    assert raw not in (None, ctypes.c_void_p(-1).value)
    addr = (raw + gib - 1) & ~(gib - 1)                 # GiB aligned: one PMD table per GiB
    try:
        assert libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), 14) == 0    # MADV_HUGEPAGE
        for i in range(n):
            ctypes.memset(addr + i * gib, 1, 1)
        huge = sum(int(ln.split()[1]) for ln in open("/proc/self/smaps_rollup") if ln.startswith("AnonHugePages"))
        for i in range(n):
            assert libc.madvise(ctypes.c_void_p(addr + i * gib), ctypes.c_size_t(2 << 20), 4) == 0  # DONTNEED
        assert libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), 15) == 0    # MADV_NOHUGEPAGE
        touched = [addr + i * gib + (600 << 20) for i in range(0, n, 3)]   # 4K pages in PMDs of their own
        for a in touched:
            ctypes.memset(a, 1, 1)
        arg = bytearray(kmod._WALK.pack(addr, addr + size, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        with kmod.Device(os.getpid()) as d:
            fcntl.ioctl(d.fd, kmod.IOC_WALK, arg, True)
            nxt = kmod._WALK.unpack(arg)[-3]
            got = d.walk(addr, addr + size)
    finally:
        libc.munmap(ctypes.c_void_p(raw), ctypes.c_size_t(size + gib))
    print(f"\nAnonHugePages before the drop: {huge} kB; first call stopped at +{(nxt - addr) / gib:.2f} GiB of {n}")
    assert got == (len(touched), 0)
    assert addr < nxt <= addr + size and (nxt - addr) % (128 << 20) in (0, size % (128 << 20))
    if huge >= n * 2048:
        assert nxt < addr + size


def test_holes_read_zero_and_present_tells_them_apart():
    with Workload() as w:
        a = w.map("a", 1)
        w.touch("a", 2)                  # even pages present, odd pages holes
        n = pages(1)
        with KmodBitmap(w.pid) as km:
            km.mark_idle([(a, a + MiB)])
            lo = a & ~(64 * PAGE_SIZE - 1)
            first = (a - lo) >> PAGE_SHIFT
            nbytes = ((first + n + 63) // 64) * 8
            off = (lo >> PAGE_SHIFT) // 8
            idle = np.unpackbits(np.frombuffer(km.dev.pread(nbytes, off), np.uint8), bitorder="little")
            km.dev.set_mode(kmod.MODE_PRESENT)
            present = np.unpackbits(np.frombuffer(km.dev.pread(nbytes, off), np.uint8), bitorder="little")
    want = (np.arange(n) % 2 == 0)
    assert np.array_equal(present[first:first + n].astype(bool), want)
    assert np.array_equal(idle[first:first + n].astype(bool), want)     # present and idle; holes 0


def test_misaligned_offsets_and_sizes_are_einval():
    with Workload() as w:
        w.map("a", 1)
        with kmod.Device(w.pid) as d:
            for nbytes, off in ((8, 4), (12, 0), (4, 8), (8, 1)):
                for op in ("r", "w"):
                    with pytest.raises(OSError) as ei:
                        if op == "r":
                            os.pread(d.fd, nbytes, off)
                        else:
                            os.pwrite(d.fd, bytes(nbytes), off)
                    assert ei.value.errno == errno.EINVAL, (op, nbytes, off)
            assert os.pread(d.fd, 0, 0) == b""
            # Past the end of user space: EOF for reads, ENXIO for writes (page_idle's rule).
            end = 1 << 62
            assert os.pread(d.fd, 8, end) == b""
            with pytest.raises(OSError) as ei:
                os.pwrite(d.fd, bytes(8), end)
            assert ei.value.errno == errno.ENXIO
            with pytest.raises(ValueError):
                d.walk(0, PAGE_SIZE, idle=np.zeros(0, np.uint64))
            import fcntl
            bad = bytearray(kmod._WALK.pack(1, PAGE_SIZE, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            with pytest.raises(OSError) as ei:
                fcntl.ioctl(d.fd, kmod.IOC_WALK, bad, True)
            assert ei.value.errno == errno.EINVAL
            with pytest.raises(OSError) as ei:
                d.set_mode(0x8000)
            assert ei.value.errno == errno.EINVAL


def test_unbound_fd_and_exited_pids_are_clean_errors():
    with kmod.Device() as d:
        with pytest.raises(OSError) as ei:
            os.pread(d.fd, 8, 0)
        assert ei.value.errno == errno.EBADFD
    # A process that exited and was reaped.
    p = subprocess.Popen(["sleep", "0"])
    p.wait()
    with pytest.raises(NoSuchProcess):
        kmod.Device(p.pid)
    # A zombie: its task is there, its mm is gone.
    p = subprocess.Popen(["sleep", "0"])
    wait_zombie(p.pid)
    with pytest.raises(NoSuchProcess):
        kmod.Device(p.pid)
    p.wait()
    # Bound, then the target exits: every operation says so; a PID reused
    # meanwhile is never read (the fd holds the old struct pid).
    p = subprocess.Popen(["sleep", "60"])
    with kmod.Device(p.pid) as d:
        d.walk(0, 64 * PAGE_SIZE)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        for op in (lambda: d.walk(0, 1 << 30), lambda: d.pread(8, 0), lambda: d.pwrite(bytes(8), 0)):
            with pytest.raises(TargetExited):
                op()


def test_kernel_thread_is_refused():
    from idlemap.errors import UsageError
    with kmod.Device() as d:
        with pytest.raises(UsageError):
            d.bind(2)


def test_target_exiting_mid_read_gives_esrch():
    """A 1 GiB target killed while reads loop over it: each read is whole
    or ESRCH (TargetExited), never anything else, and no splat."""
    outcomes = {"whole": 0, "esrch": 0}
    for _ in range(3):
        with Workload() as w:
            a = w.map("a", 1024)
            w.touch("a")
            with KmodBitmap(w.pid) as km:
                rng = [(a, a + 1024 * MiB)]
                killer = threading.Timer(0.3, w.kill)
                killer.start()
                try:
                    while True:
                        try:
                            m = km.read(rng, remark=True)
                        except TargetExited:
                            outcomes["esrch"] += 1
                            break
                        assert m.present.sum() in (0, pages(1024))
                        outcomes["whole"] += 1
                finally:
                    killer.cancel()
    print(f"\nreads: {outcomes}")
    assert outcomes["esrch"] == 3


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_six_windows_in_a_row_with_read_and_remark(thp):
    opt = "thp" if thp else "nothp"
    g = HPAGE_PAGES if thp else 1
    n = 32 * g
    with Workload() as w:
        a = w.map("a", n * PAGE_SIZE / MiB, opt)
        w.touch("a")
        rng = [(a, a + n * PAGE_SIZE)]
        units = n // g
        even = np.arange(units) % 2 == 0
        first8 = np.arange(units) < 8
        patterns = [even, ~even, np.zeros(units, bool), first8, np.ones(units, bool), even]
        with KmodBitmap(w.pid) as km:
            assert km.mark_idle(rng) == n
            for i, want_units in enumerate(patterns):
                for u in np.flatnonzero(want_units):
                    w.touch("a", 1, int(u) * g, 1)
                m = km.read(rng, remark=True)
                assert m.present.all() and bool(m.huge.all()) == thp
                want = np.repeat(want_units, g)
                assert np.array_equal(m.accessed, want), \
                    f"window {i}: {np.flatnonzero(m.accessed != want)[:10].tolist()} wrong"
                assert km.last_marked == int(want.sum())


def test_pwrite_marks_only_the_bits_set():
    with Workload() as w:
        a = w.map("a", 1)
        w.touch("a")
        n = pages(1)
        lo = a & ~(64 * PAGE_SIZE - 1)
        first = (a - lo) >> PAGE_SHIFT
        nwords = (first + n + 63) // 64
        bits = np.zeros(nwords * 64, bool)
        bits[first:first + n:4] = True                   # every 4th page of a
        with KmodBitmap(w.pid) as km:
            assert km.dev.pwrite(np.packbits(bits, bitorder="little").tobytes(),
                                 (lo >> PAGE_SHIFT) // 8) == nwords * 8
            m = km.read([(a, a + MiB)])
    want = np.zeros(n, bool)
    want[::4] = True
    assert np.array_equal(m.idle, want)


def _hot_loop_windows(hot_pages, cold_pages, make_bitmap, nwin, remark):
    """hotset.c pinned to CPU 1 writes its hot set forever; we (on CPU 0)
    mark, wait 0.3 s, read.  Returns hot pages read idle per window."""
    from fleet_helpers import HotSet
    hot_mib, cold_mib = hot_pages * PAGE_SIZE / MiB, cold_pages * PAGE_SIZE / MiB
    os.sched_setaffinity(0, {0})
    try:
        with HotSet(int(hot_mib) or 1, int(cold_mib)) as hs:
            os.sched_setaffinity(hs.pid, {1})
            size = (int(hot_mib) + int(cold_mib)) * MiB
            start = getattr(hs, "addr", None)
            if start is None:
                start = next(m for m in read_maps(hs.pid) if m.size_bytes == size).start
            rng = [(start, start + size)]
            hp = pages(int(hot_mib))
            misses, cold_acc = [], []
            bm = make_bitmap(hs.pid)
            try:
                time.sleep(0.3)                 # the loop runs, its translations cached
                bm.mark_idle(rng)
                for _ in range(nwin):
                    time.sleep(0.3)
                    m = bm.read(rng, remark=remark)
                    if not remark:
                        bm.mark_idle(rng)
                    misses.append(int(m.idle[:hp].sum()))
                    cold_acc.append(int(m.accessed[hp:].sum()))
            finally:
                bm.close()
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    return misses, cold_acc


def test_continuously_hot_pinned_loop_reads_hot_in_every_window():
    """The case page_idle gets wrong without a flush (docs/tlb.md): a tight
    loop whose translations never leave the TLB.  The module flushes after
    clearing, so every hot page reads accessed in every window."""
    if os.cpu_count() < 2:
        pytest.skip("needs 2 CPUs (the VM has 2)")
    hot = pages(2)                                   # 512 pages
    misses, cold = _hot_loop_windows(hot, pages(8), KmodBitmap, 6, True)
    pi_misses, _ = _hot_loop_windows(hot, pages(8), lambda pid: IdleBitmap(pid, tlb_flush="none"), 3, False)
    print(f"\nhot pages ({hot}) read idle per window: kmod {misses}, page_idle unflushed {pi_misses}")
    assert misses == [0] * 6
    assert cold == [0] * 6


def test_read_cost_against_page_idle():
    """Not a goal check: ns per page of a steady window (read + re-mark) on
    256 MiB, module vs the page_idle path, for the report."""
    out = {}
    with Workload() as w:
        a = w.map("a", 256, "nothp")
        w.touch("a")
        rng = [(a, a + 256 * MiB)]
        for name, cls in (("kmod", KmodBitmap), ("page_idle", IdleBitmap)):
            with cls(w.pid) as bm:
                bm.mark_idle(rng)
                w.touch("a", 2)
                bm.read(rng, remark=True)
                t = []
                for _ in range(3):
                    w.touch("a", 2)
                    t0 = time.perf_counter()
                    bm.read(rng, remark=True)
                    t.append(time.perf_counter() - t0)
                out[name] = min(t) * 1e9 / pages(256)
    print(f"\nsteady window, 256 MiB 4K half touched (TCG): ns/page {out}, "
          f"page_idle/kmod {out['page_idle'] / out['kmod']:.1f}x")


def test_backend_kmod_window_is_exact():
    from idlemap.backends import choose
    from idlemap.backends.kmod import KmodBackend
    from idlemap.kernel.process import identify
    assert choose("kmod").cls is KmodBackend
    with Workload() as w:
        a = w.map("a", 64, "nothp")
        w.touch("a")
        with KmodBackend(identify(w.pid)) as be:
            be.mark()
            w.touch("a", 1, 0, pages(16))
            s = be.sample()
            w.touch("a", 1, pages(16), pages(8))
            s2 = be.sample()               # the next window: only the 8 MiB touched since
    u = next(u for u in s.by_mapping if u.mapping.start <= a < u.mapping.end)
    u2 = next(u for u in s2.by_mapping if u.mapping.start <= a < u.mapping.end)
    assert (u.accessed_bytes, u.rss_bytes) == (16 * MiB, 64 * MiB)
    assert u2.accessed_bytes == 8 * MiB
    assert s.backend == "kmod" and s.idle_map is not None


def test_cli_status_unload_busy_and_reload(kmod_loaded, capsys):
    import json
    from idlemap.cli import main
    assert main(["kmod", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["loaded"] and st["device"] == kmod.DEVICE
    assert st["interface"] == st["speaks"] == kmod.API_VERSION      # asked of the loaded module
    from idlemap.kernel.features import probe
    assert probe().kmod_api == kmod.API_VERSION                      # what --backend auto judges by
    with kmod.Device():
        assert main(["kmod", "unload"]) == 75          # EX_TEMPFAIL: close it, then again
        assert "in use" in capsys.readouterr().err
    assert main(["kmod", "load", "--ko", kmod_loaded]) == 2      # already loaded
    assert "already loaded" in capsys.readouterr().err
    assert main(["kmod", "unload"]) == 0
    assert not os.path.exists(kmod.DEVICE)
    assert main(["kmod", "load", "--ko", kmod_loaded]) == 0
    assert os.path.exists(kmod.DEVICE)


def test_docs_c_example_runs(tmp_path):
    """The C example in docs/kmod.md compiles against kmod/idlemap.h and
    gives the right answer: a 64 MiB mapping touched before the mark and
    not during the second reads 0 of 16384 pages accessed."""
    import re
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "kmod.md")) as f:
        code = re.search(r"```c\n(.*?)```", f.read(), re.S).group(1)
    src = tmp_path / "ex.c"
    src.write_text(code)
    exe = tmp_path / "ex"
    subprocess.run(["gcc", "-O1", "-I", os.path.join(root, "kmod"), "-o", str(exe), str(src)], check=True)
    with Workload() as w:
        a = w.map("a", 66, "nothp")
        w.touch("a")
        lo = (a + 64 * PAGE_SIZE - 1) & ~(64 * PAGE_SIZE - 1)
        r = subprocess.run([str(exe), str(w.pid), hex(lo)], stdout=subprocess.PIPE, text=True, check=True)
    assert r.stdout.strip() == "0 of 16384 present pages accessed", r.stdout


@pytest.mark.parametrize("kind", ["file", "shared"])
def test_file_and_shared_pages_equal_to_flushed_page_idle(kind, tmp_path):
    opts = ("file", str(tmp_path / "f")) if kind == "file" else ("shared",)
    with Workload() as w:
        a = w.map("a", 8, *opts)
        w.touch("a")
        rng = [(a, a + 8 * MiB)]
        with IdleBitmap(w.pid, tlb_flush="soft-dirty") as pi, KmodBitmap(w.pid) as km:
            km.mark_idle(rng)
            pi.mark_idle(rng)
            w.touch("a", 5)
            mk = km.read(rng)
            mp = pi.read(rng)
    assert mk.present.all() and np.array_equal(mk.present, mp.present)
    assert np.array_equal(mk.idle, mp.idle), np.flatnonzero(mk.idle != mp.idle)[:10].tolist()
    assert int(mk.accessed.sum()) == len(range(0, pages(8), 5))


def test_munmap_and_mmap_racing_with_reads():
    """Mappings come and go while another thread reads and re-marks the
    whole process in a loop: no error but the target's own, no splat."""
    errors, reads = [], [0]
    with Workload() as w:
        stop = threading.Event()

        def reader():
            try:
                with KmodBitmap(w.pid) as km:
                    while not stop.is_set():
                        km.read(remark=True)
                        reads[0] += 1
            except Exception as e:       # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(6):
                w.map(f"x{i}", 32, "thp" if i % 2 else "nothp")
                w.touch(f"x{i}")
                w.call("unmap", f"x{i}")
        finally:
            stop.set()
            t.join()
    assert not errors, errors
    assert reads[0] >= 1


def test_maps_signature_changes_exactly_when_the_maps_do():
    """IDLEMAP_IOC_MAPS_SIG, which lets KmodBitmap skip /proc/PID/maps: over
    a mapping, a one-page mprotect and back, a touch and an munmap of our
    own process, two signatures are equal exactly when the maps text is;
    a KmodBitmap sees a mapping made between two reads; a zombie or an
    exited target is TargetExited."""
    libc = ctypes.CDLL(None, use_errno=True)
    rw = mmap.PROT_READ | mmap.PROT_WRITE

    def state(d):
        for _ in range(5):      # the interpreter may map something meanwhile: retry
            a = d.maps_signature()
            with open("/proc/self/maps") as f:
                text = f.read()
            if d.maps_signature() == a:
                return a, text
        pytest.fail("our own memory map kept changing")

    with kmod.Device(os.getpid()) as d:
        states = [state(d)]
        m = mmap.mmap(-1, 64 * PAGE_SIZE)
        view = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(view)
        del view
        states.append(state(d))
        assert libc.mprotect(ctypes.c_void_p(addr + 8 * PAGE_SIZE), PAGE_SIZE, mmap.PROT_READ) == 0
        states.append(state(d))
        assert libc.mprotect(ctypes.c_void_p(addr + 8 * PAGE_SIZE), PAGE_SIZE, rw) == 0
        states.append(state(d))
        m[:PAGE_SIZE] = b"x" * PAGE_SIZE            # pages, not mappings: no change
        states.append(state(d))
        m.close()
        states.append(state(d))
    for i, (sa, ta) in enumerate(states):
        for sb, tb in states[i + 1:]:
            assert (sa == sb) == (ta == tb)
    sig = [s for s, _ in states]
    # mapped: new; one page split off: new.  Whether putting the page back
    # re-merges the VMAs into the mapped state's text depends on what the
    # interpreter mapped beside them meanwhile (CI-like runs saw both), so
    # the equal direction is asserted wherever the texts are equal -- above
    # -- and at least one such pair must occur (the touch maps nothing).
    assert len({sig[0], sig[1], sig[2]}) == 3
    assert any(ta == tb for i, (_, ta) in enumerate(states) for _, tb in states[i + 1:])
    print(f"maps signatures over 6 states: {len(set(sig))} distinct, "
          f"{len({t for _, t in states})} distinct maps texts")

    with Workload() as w, KmodBitmap(w.pid) as km:
        before = km.read()
        a = w.map("late", 8)
        w.touch("late")
        after = km.read()
        assert not any(s.start <= a < s.end for s in before.spans)
        assert np.count_nonzero(after.present[span_view(after, a, pages(8))]) == pages(8)

    p = subprocess.Popen(["sleep", "60"])
    try:
        with kmod.Device(p.pid) as d:
            p.kill()
            wait_zombie(p.pid)
            with pytest.raises(TargetExited):
                d.maps_signature()                    # a zombie has no mm
            p.wait()
            with pytest.raises(TargetExited):
                d.maps_signature()                    # reaped: the held struct pid has no task
    finally:
        p.kill()
        p.wait()


def test_concurrent_readers_on_one_target():
    errors = []
    with Workload() as w:
        a = w.map("a", 64)
        w.touch("a")
        stop = threading.Event()

        def reader():
            try:
                with KmodBitmap(w.pid) as km:
                    while not stop.is_set():
                        m = km.read([(a, a + 64 * MiB)], remark=True)
                        assert m.present.all()
            except Exception as e:       # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=reader) for _ in range(3)]
        for t in ts:
            t.start()
        for _ in range(5):
            w.touch("a", 3)
            time.sleep(0.2)
        stop.set()
        for t in ts:
            t.join()
    assert not errors, errors


def test_pread_in_remark_mode_reads_and_re_marks():
    """IDLEMAP_MODE_REMARK: the RFC pread itself clears what it reads
    accessed, so the next pread (no touch between) reads all idle."""
    with Workload() as w:
        a = w.map("a", 1)
        w.touch("a")
        n = pages(1)
        lo = a & ~(64 * PAGE_SIZE - 1)
        first = (a - lo) >> PAGE_SHIFT
        nbytes = ((first + n + 63) // 64) * 8
        off = (lo >> PAGE_SHIFT) // 8
        with kmod.Device(w.pid) as d:
            d.walk(a, a + MiB, clear=True)
            w.touch("a", 4)
            d.set_mode(kmod.MODE_IDLE | kmod.MODE_REMARK)
            r1 = np.unpackbits(np.frombuffer(d.pread(nbytes, off), np.uint8), bitorder="little")
            r2 = np.unpackbits(np.frombuffer(d.pread(nbytes, off), np.uint8), bitorder="little")
    want = np.arange(n) % 4 != 0                    # idle: all but every 4th page
    assert np.array_equal(r1[first:first + n].astype(bool), want)
    assert r2[first:first + n].all()


def test_thp_split_in_place_is_read_per_pte():
    """MADV_PAGEOUT of one 4 KiB page splits its THP in place; the next walk
    sees PTEs there (huge 0) and tracks those 512 pages one by one."""
    from idlemap.kernel import process_madvise as pmad
    H = HPAGE_PAGES * PAGE_SIZE
    with Workload() as w:
        lo = w.map("t", 8, "thp")
        w.touch("t")
        rng = [(lo, lo + 4 * H)]
        with KmodBitmap(w.pid) as km:
            km.mark_idle(rng)
            m = km.read(rng)
            assert m.huge.all() and m.idle.all()
            pfd = pmad.pidfd_open(w.pid)
            try:
                pmad.process_madvise(pfd, w.pid, np.array([lo + H + 7 * PAGE_SIZE]),
                                     np.array([PAGE_SIZE]), pmad.MADV_PAGEOUT)
            finally:
                os.close(pfd)
            km.mark_idle(rng)
            first = HPAGE_PAGES + 3
            w.touch("t", 1, first, 1)
            m = km.read(rng)
    blk = slice(HPAGE_PAGES, 2 * HPAGE_PAGES)
    assert m.huge[:HPAGE_PAGES].all() and m.huge[2 * HPAGE_PAGES:].all() and not m.huge[blk].any()
    assert np.flatnonzero(m.accessed).tolist() == [first]


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_walk_cost_per_page(thp):
    """Not a goal check: the module's own cost (one ioctl loop, no Python
    unpacking) of a read-and-re-mark walk over 512 MiB, ns per page, TCG."""
    with Workload() as w:
        a = w.map("a", 512, "thp" if thp else "nothp")
        w.touch("a")
        n = pages(512)
        bufs = np.zeros((2, (n + 63) // 64), np.uint64)
        with kmod.Device(w.pid) as d:
            d.walk(a, a + 512 * MiB, clear=True)
            t = []
            for _ in range(3):
                w.touch("a", 2)
                t0 = time.perf_counter()
                p, i = d.walk(a, a + 512 * MiB, idle=bufs[0], present=bufs[1], clear=True)
                t.append(time.perf_counter() - t0)
    assert p == n
    print(f"\n{'thp' if thp else '4k'} walk, 512 MiB, read + re-mark: {min(t) * 1e3:.1f} ms, "
          f"{min(t) * 1e9 / n:.1f} ns/page (TCG)")


def test_wss_command_with_backend_kmod(capsys):
    from idlemap.cli import main
    with Workload() as w:
        w.map("a", 16)
        w.touch("a")
        rc = main(["wss", "--backend", "kmod", str(w.pid), "0.2", "2"])
    cap = capsys.readouterr()
    print(cap.out, cap.err)
    assert rc == 0, cap.err
    assert "kmod" in cap.out + cap.err



_FORKER = r"""
import ctypes, mmap, os, signal, sys
import numpy as np
P = mmap.PAGESIZE
m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # COW after fork
a = np.frombuffer(m, np.uint8)
a[::P] = 1                                  # every page present, then shared COW
child = os.fork()
if child:                                   # the parent never touches its pages again
    print(hex(ctypes.addressof(ctypes.c_char.from_buffer(m))), child, flush=True)
    signal.pause()
else:
    for line in sys.stdin:                  # "read": every 2nd page, reads only (stays shared)
        print("ok", int(a[::2 * P].sum()), flush=True)
"""


def answer(p):
    """The next line a helper script `p` (a Popen with text pipes) prints;
    never hangs the VM on a dead helper."""
    import select
    if not select.select([p.stdout], [], [], 60)[0]:
        raise AssertionError(f"the helper {p.args} did not answer")
    return p.stdout.readline()


def test_cow_shared_pages_only_the_bound_process_counts(tmp_path):
    """After fork the parent's and the child's PTEs map the same frames.
    The child reads every 2nd page: page_idle (frames, rmap) calls them
    accessed whichever process's map is asked; the module bound to the
    parent (its own page tables) calls them idle, bound to the child accessed."""
    script = tmp_path / "forker.py"
    script.write_text(_FORKER)
    p = subprocess.Popen([os.sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    child = None
    try:
        addr_s, child_s = answer(p).split()
        addr, child = int(addr_s, 16), int(child_s)
        rng = [(addr, addr + 4 * MiB)]
        n = pages(4)
        with IdleBitmap(p.pid, tlb_flush="soft-dirty") as pi, KmodBitmap(p.pid) as kp, \
                KmodBitmap(child) as kc:
            kp.mark_idle(rng)
            kc.mark_idle(rng)
            pi.mark_idle(rng)
            p.stdin.write("read\n")
            p.stdin.flush()
            assert answer(p).startswith("ok")
            m_parent = kp.read(rng)
            m_child = kc.read(rng)
            m_pi = pi.read(rng)
    finally:
        for pid in (child, p.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        p.wait(timeout=60)
    want = np.arange(n) % 2 == 0
    assert m_parent.present.all() and m_parent.idle.all()          # the parent touched nothing
    assert np.array_equal(m_child.accessed, want)
    assert np.array_equal(m_pi.accessed, want)                     # page_idle: the frames were used


def test_swapped_pages_equal_to_flushed_page_idle(zram_swap):
    """Swap on zram: pages paged out (MADV_PAGEOUT) before the mark, some
    of them touched (swapped back in) after it, and other pages -- touched
    and not -- paged out after the touch, just before the read.

    What "equal" means for a swapped page: it has no frame, so page_idle
    cannot ask about it (pagemap gives no frame number, only its swap bit)
    and the module finds a swap entry, not a PTE, in its walk.  Both report
    it the same way: not present, not idle (holes are not idle), swapped --
    so present, idle, huge and swapped are compared bit for bit, as for
    resident pages.  A page swapped back in by the touch is a new frame,
    present and accessed in both.  The paged-out set is what pagemap shows
    (MADV_PAGEOUT is best effort): asserted within what was asked and at
    least 90% of it."""
    from idlemap.kernel import lru
    from idlemap.kernel import process_madvise as pmad
    from idlemap.kernel.features import swap_configured
    assert swap_configured()        # sysinfo's totalswap sees the zram area (reservation checks rely on it)
    n = pages(8)
    i = np.arange(n)
    out_before, touched, out_after = i % 4 == 1, i % 3 == 0, i % 5 == 2
    with Workload() as w:
        a = w.map("a", 8, "nothp")
        w.touch("a")                                 # every page present
        rng = [(a, a + 8 * MiB)]
        pfd = pmad.pidfd_open(w.pid)

        def page_out(sel):
            lru.drain_all()          # pages still in a CPU's LRU batch cannot be isolated
            idx = np.flatnonzero(sel)
            r = pmad.process_madvise(pfd, w.pid, a + idx * PAGE_SIZE, np.full(idx.size, PAGE_SIZE),
                                     pmad.MADV_PAGEOUT)
            assert not r.failed and r.advised_bytes == idx.size * PAGE_SIZE
        try:
            page_out(out_before)
            with IdleBitmap(w.pid, tlb_flush="soft-dirty") as pi, KmodBitmap(w.pid) as km:
                km.mark_idle(rng)
                pi.mark_idle(rng)
                w.touch("a", 3)                      # swaps in the touched ones paged out
                page_out(out_after)
                mk = km.read(rng)
                mp = pi.read(rng)
        finally:
            os.close(pfd)
    assert_same_bits(mk, mp)
    asked = (out_before & ~touched) | out_after
    swapped = mk.swapped
    print(f"\n{n} pages: {int(swapped.sum())} swapped (asked {int(asked.sum())}), "
          f"{int(mk.present.sum())} present, {int(mk.accessed.sum())} accessed: equal to page_idle bit for bit")
    assert not (swapped & ~asked).any() and swapped.sum() >= 0.9 * asked.sum()
    assert np.array_equal(mk.present, ~swapped)      # every page was faulted in: absent = swapped
    assert np.array_equal(mk.accessed, touched & ~swapped)
    assert np.array_equal(mk.idle, ~touched & ~swapped)


_MOVER = r"""
import ctypes, mmap, sys
import numpy as np
P, H, MiB = mmap.PAGESIZE, 2 << 20, 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = libc.mremap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
old, new, advice = int(sys.argv[1]) * MiB, int(sys.argv[2]) * MiB, int(sys.argv[3])

def aligned(size, prot):                    # 2 MiB aligned, so THP can map it whole
    raw = libc.mmap(None, size + H, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert raw != ctypes.c_void_p(-1).value, ctypes.get_errno()
    return (raw + H - 1) & ~(H - 1)

def view(addr, size):
    return np.frombuffer((ctypes.c_uint8 * size).from_address(addr), np.uint8)

src = aligned(old, mmap.PROT_READ | mmap.PROT_WRITE)
dst = aligned(new, 0)                        # PROT_NONE, reserved: MREMAP_FIXED replaces only our own
assert libc.madvise(src, old, advice) == 0  # 14 MADV_HUGEPAGE, 15 MADV_NOHUGEPAGE
a = view(src, old)
a[::P] = 1                                  # every page present (written: no huge zero page)
print(hex(src), hex(dst), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "touch":                      # touch STEP UNIT: the first page of every STEP-th unit
        step, unit = map(int, args)
        a[::step * unit * P] = 1
        print("ok", flush=True)
    elif cmd == "move":                     # grow and move: MREMAP_MAYMOVE | MREMAP_FIXED
        got = libc.mremap(src, old, new, 3, dst)
        a = view(got, new) if got == dst else a
        print("ok", hex(got or 0), flush=True)
"""


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_mremap_moved_pages_equal_to_flushed_page_idle(thp, tmp_path):
    """A 16 MiB mapping, every page present, marked idle through both; a
    quarter of it touched; then mremap moves it to a new address and grows
    it to 28 MiB (the page tables move: same frames, PTEs -- or, 2 MiB
    aligned, THP PMDs -- carried over with their accessed bits); a third of
    the new range touched after the move, the grown tail faulted in by it.
    Over the new range: present, idle, huge and swapped equal to flushed
    page_idle bit for bit, accessed exactly the union of both touches, the
    untouched tail holes; nothing is left mapped at the old address."""
    g = HPAGE_PAGES if thp else 1
    old, new = 16, 28                  # MiB: 8 units of 2 MiB moved, 6 grown
    script = tmp_path / "mover.py"
    script.write_text(_MOVER)
    p = subprocess.Popen([os.sys.executable, str(script), str(old), str(new), "14" if thp else "15"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def tell(cmd):
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        reply = answer(p).split()
        assert reply[:1] == ["ok"], (cmd, reply)
        return reply[1:]
    from idlemap.testing.child import end
    try:
        src, dst = (int(x, 16) for x in answer(p).split())
        with IdleBitmap(p.pid, tlb_flush="soft-dirty") as pi, KmodBitmap(p.pid) as km:
            km.mark_idle([(src, src + old * MiB)])
            pi.mark_idle([(src, src + old * MiB)])
            tell(f"touch 4 {g}")
            assert int(tell("move")[0], 16) == dst
            tell(f"touch 3 {g}")
            rng = [(dst, dst + new * MiB)]
            mk = km.read(rng)
            mp = pi.read(rng)
        left = [m for m in read_maps(p.pid) if m.start < src + old * MiB and src < m.end]
    finally:
        end(p)
    assert_same_bits(mk, mp)
    assert [(s.start, s.end) for s in mk.spans] == [(dst, dst + new * MiB)]
    assert not left, left
    u = np.arange(pages(new) // g)
    moved = u < pages(old) // g
    after = u % 3 == 0
    want_present, want_accessed = np.repeat(moved | after, g), np.repeat((moved & (u % 4 == 0)) | after, g)
    assert np.array_equal(mk.present, want_present)
    assert np.array_equal(mk.accessed, want_accessed), np.flatnonzero(mk.accessed != want_accessed)[:10].tolist()
    assert np.array_equal(mk.huge, want_present if thp else np.zeros_like(want_present))
    print(f"\n{'thp' if thp else '4k'}: {int(mk.present.sum())} present, {int(mk.accessed.sum())} accessed "
          f"after a {old} -> {new} MiB move: equal to page_idle bit for bit")
