"""hugetlb mappings through idlemap's module: counted whole, like a THP.

A 2 MiB hugetlb page has one entry (a PMD) and one accessed bit, so its 512
pages read idle or accessed together, and marking any of them marks it.
The truth is what the workload was told to touch (page_idle cannot be the
reference: it ignores hugetlb pages, which are not on the LRU).  Timing-free:
mark -> touch set X -> wait for the ack -> read.

Runs wherever the module is loadable: the test VM's 6.1 kernel (marker vm;
CONFIG_HUGETLBFS, HUGETLB_PAGE) and Debian's stock 6.1 and 6.12 kernels
(marker kmod_stock; scripts/test.sh kmod-stock).  Huge pages are reserved
here through /proc/sys/vm/nr_hugepages and given back at the end.
"""
import mmap
import os

import numpy as np
import pytest

from idlemap.kernel import kmod
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE
from idlemap.kmodbitmap import KmodBitmap
from idlemap.testing.workload import Workload

IN_TEST_VM = os.environ.get("IDLEMAP_IN_VM") == "1"
IN_STOCK_VM = os.environ.get("IDLEMAP_IN_STOCK_VM") == "1"
pytestmark = [pytest.mark.vm, pytest.mark.kmod_stock, pytest.mark.skipif(
    not (IN_TEST_VM or IN_STOCK_VM), reason="loads a kernel module: only in the test VM "
    "(scripts/test.sh vm) or on a stock kernel (scripts/test.sh kmod-stock)")]

MiB = 1 << 20
HPAGE = 2 * MiB
HP_PAGES = HPAGE // PAGE_SIZE            # 512
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
@pytest.fixture(scope="module")
def hugepages():
    """80 more 2 MiB pages in the pool (160 MiB), the old count restored after."""
    with open(NR_HUGEPAGES) as f:
        old = int(f.read())
    with open(NR_HUGEPAGES, "w") as f:
        f.write(str(old + 80))
    with open(NR_HUGEPAGES) as f:
        got = int(f.read())
    assert got == old + 80, f"only {got - old} of 80 huge pages could be reserved"
    try:
        yield got - old
    finally:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(old))


def view(m, addr, npages):
    s = next(s for s in m.spans if s.start <= addr < s.end)
    off = s.offset + ((addr - s.start) >> PAGE_SHIFT)
    return slice(off, off + npages)


# (what the workload does, in 4 KiB pages of the mapping) -> the huge pages
# that must read accessed.  One page of a huge page is enough.
WINDOWS = [
    ("touch", [(1, 5, 1)], {0}),
    ("touch", [(1, 2 * HP_PAGES - 1, 2)], {1, 2}),          # the last page of 1, the first of 2
    ("touch", [(1000, 0, 0)], {0, 1, 3, 5, 7}),             # pages 0, 1000, ... 4000
    ("touch", [], set()),
    ("touch", [(1, 0, 0)], set(range(8))),
    ("read", [(1, 7 * HP_PAGES + 100, 1)], {7}),            # a read sets the bit too
]


@pytest.mark.parametrize("kind", ["private", "shared"])
def test_hugetlb_pages_read_whole_bit_for_bit(kmod_loaded, hugepages, kind):
    """8 huge pages (16 MiB, 4096 bits): six read-and-re-mark windows; each
    bit is exactly "its huge page was touched", the present and huge bitmaps
    cover the mapping, nothing reads swapped.  Shared mappings are walked
    under the file's i_mmap_rwsem (page tables may be shared)."""
    n = 8 * HP_PAGES
    with Workload() as w:
        a = w.map("h", 16, "hugetlb", *(["shared"] if kind == "shared" else []))
        assert a % HPAGE == 0
        w.touch("h")
        rng = [(a, a + 16 * MiB)]
        with KmodBitmap(w.pid) as km:
            km.mark_idle(rng)
            seen = []
            for how, pattern, hot in WINDOWS:
                for step, first, count in pattern:
                    (w.touch if how == "touch" else w.read)("h", step, first, count)
                m = km.read(rng, remark=True)
                v = view(m, a, n)
                assert m.present[v].all() and m.huge[v].all() and not m.swapped[v].any()
                want = np.repeat([i in hot for i in range(8)], HP_PAGES)
                diff = np.flatnonzero(m.accessed[v] != want)
                assert diff.size == 0, f"{how} {pattern}: pages {diff[:10].tolist()} differ (want huge pages {hot})"
                seen.append(int(m.accessed[v].sum()) // HP_PAGES)
    print(f"\n{kind} hugetlb, 8 x 2 MiB: huge pages accessed per window {seen}: bit for bit")


def test_hugetlb_mark_one_page_marks_the_huge_page(kmod_loaded, hugepages):
    """RFC pwrite of one word (64 pages) inside huge page 3 marks all of
    huge page 3 and nothing else; RFC pread then says so word for word."""
    with Workload() as w:
        a = w.map("h", 16, "hugetlb")
        w.touch("h")
        rng = [(a, a + 16 * MiB)]
        with KmodBitmap(w.pid) as km:
            km.mark_idle(rng)
            w.touch("h")                                     # everything accessed
            first = (a >> PAGE_SHIFT) + 3 * HP_PAGES + 128   # a page in huge page 3
            assert first % 64 == 0
            km.dev.pwrite(np.array([2**64 - 1], np.uint64).tobytes(), first // 8)
            m = km.read(rng)                                 # no re-mark
            v = view(m, a, 8 * HP_PAGES)
            want = np.repeat([i != 3 for i in range(8)], HP_PAGES)
            assert np.array_equal(m.accessed[v], want)
            words = 8 * HP_PAGES // 64
            rfc = np.frombuffer(km.dev.pread(words * 8, (a >> PAGE_SHIFT) // 8), np.uint64)
    want_idle, _ = m.rfc_words(a, a + 16 * MiB, holes_idle=False)
    assert np.array_equal(rfc, want_idle)
    assert (rfc[3 * 8:4 * 8] == np.uint64(2**64 - 1)).all() and not rfc[:3 * 8].any()


def test_hugetlb_untouched_pages_are_holes(kmod_loaded, hugepages):
    """Huge pages reserved by the mapping but never faulted in: neither
    present nor idle (not "idle": nothing is there)."""
    with Workload() as w:
        a = w.map("h", 16, "hugetlb")
        w.touch("h", 1, 0, 4 * HP_PAGES)                     # huge pages 0-3 only
        with KmodBitmap(w.pid) as km:
            km.mark_idle([(a, a + 16 * MiB)])
            m = km.read([(a, a + 16 * MiB)])
    v = view(m, a, 8 * HP_PAGES)
    half = 4 * HP_PAGES
    assert m.present[v][:half].all() and m.idle[v][:half].all()
    assert not m.present[v][half:].any() and not m.idle[v][half:].any()


def test_hugetlb_page_cut_by_a_chunk_boundary_reads_whole(kmod_loaded, hugepages):
    """The module walks in chunks of 128 MiB of address space, dropping
    mmap_lock between them; a walk starting 1 MiB into a hugetlb mapping
    puts a chunk boundary in the middle of a huge page.  Read and re-mark
    must test that page once: after touching everything, every page of the
    walked range reads accessed (the second half of the cut page would read
    idle if the next chunk tested it again after the first cleared it)."""
    size = 144 * MiB
    with Workload() as w:
        a = w.map("h", 144, "hugetlb")
        w.touch("h")
        start, end = a + MiB, a + size
        npages = (end - start) >> PAGE_SHIFT
        idle = np.zeros(-(-npages // 64), np.uint64)
        present = np.zeros_like(idle)
        with kmod.Device(w.pid) as dev:
            dev.walk(start, end, clear=True)                 # mark
            w.touch("h")
            n_present, n_idle = dev.walk(start, end, idle=idle, present=present, clear=True)
            again = dev.walk(start, end, clear=True)          # nothing touched since
    bits = np.unpackbits(idle.view(np.uint8), bitorder="little")[:npages]
    assert n_present == npages and n_idle == 0, (n_present, n_idle, np.flatnonzero(bits)[:5])
    assert np.unpackbits(present.view(np.uint8), bitorder="little")[:npages].all()
    assert again == (npages, npages)


def test_hugetlb_page_cut_by_a_call_boundary_reads_whole(kmod_loaded, hugepages):
    """One call walks at most 8 GiB; the Python layer (Device.walk) calls
    again from where it stopped.  A walk starting 1 MiB into a hugetlb
    mapping of 8 GiB + 4 MiB (address space only: MAP_NORESERVE, two huge
    pages faulted in, at 0 and at 8 GiB) puts that boundary in the middle of
    the second one: the continuing call must take it as the first call read
    it, so after touching both, read and re-mark says all 768 present pages
    accessed (256 of the first, 512 of the second), then none."""
    size = (8 << 30) + 4 * MiB
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000 | 0x4000)
    try:
        buf = memoryview(mm)
        a = np.frombuffer(buf[:8], np.uint64).ctypes.data     # the mapping's address
        assert a % HPAGE == 0
        start, end = a + MiB, a + size
        npages = (end - start) >> PAGE_SHIFT
        idle = np.zeros(-(-npages // 64), np.uint64)
        with kmod.Device(os.getpid()) as dev:
            for _ in range(2):
                mm[0] = mm[8 << 30] = 1                         # both huge pages accessed
                dev.walk(start, end, clear=True)
            mm[0] = mm[8 << 30] = 1
            got = dev.walk(start, end, idle=idle, clear=True)
            again = dev.walk(start, end, clear=True)
        del buf
    finally:
        mm.close()
    assert got == (768, 0), (got, np.flatnonzero(np.unpackbits(idle.view(np.uint8), bitorder="little"))[:5])
    assert again == (768, 768)
