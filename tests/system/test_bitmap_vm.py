"""The VA-indexed idle bitmap on a real kernel with page_idle (the test VM).

Timing-free: mark idle -> tell the workload to touch exactly set X -> wait
for its ack -> read -> compare bit for bit.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from idlemap.backends.page_idle import PageIdleBackend
from idlemap.bitmap import HPAGE_PAGES, IdleBitmap
from idlemap.cli import main
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.testing.workload import Workload

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB = 1 << 20


def pages(mib):
    return (mib * MiB) >> PAGE_SHIFT


def span_view(m, addr, npages):
    """Flat-array slice of [addr, addr + npages pages) in an IdleMap."""
    s = next(s for s in m.spans if s.start <= addr < s.end)
    off = s.offset + ((addr - s.start) >> PAGE_SHIFT)
    return slice(off, off + npages)


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_known_pattern_is_exact(thp):
    opt = "thp" if thp else "nothp"
    # THP: touch every 3rd huge page, 4K: every 3rd page.
    step = 3 * HPAGE_PAGES if thp else 3
    with Workload() as w:
        a = w.map("a", 16, opt)          # every `step`-th page touched
        b = w.map("b", 8, opt)           # all touched
        c = w.map("c", 8, opt)           # none touched
        d = w.map("d", 4, opt)           # never faulted in: holes
        for n in "abc":
            w.touch(n)
        # The flush keeps translations cached by the touches above from hiding
        # the touches after the mark (docs/tlb.md; tested on its own below).
        with IdleBitmap(w.pid, tlb_flush="soft-dirty") as bm:
            bm.mark_idle()
            w.touch("a", step)
            w.touch("b")
            m = bm.read()
    na, nb, nc, nd = pages(16), pages(8), pages(8), pages(4)
    sa, sb, sc, sd = (span_view(m, a, na), span_view(m, b, nb), span_view(m, c, nc), span_view(m, d, nd))
    want_a = np.zeros(na, bool)
    if thp:
        blocks = np.zeros(na // HPAGE_PAGES, bool)
        blocks[::3] = True
        want_a = np.repeat(blocks, HPAGE_PAGES)
        assert m.huge[sa].all() and m.huge[sb].all() and m.huge[sc].all(), "THP not backing the mappings"
    else:
        want_a[::step] = True
        assert not m.huge[sa].any()
    assert m.present[sa].all() and m.present[sb].all() and m.present[sc].all()
    assert (m.accessed[sa] == want_a).all()
    assert m.accessed[sb].all()
    assert not m.accessed[sc].any() and m.idle[sc].all()
    # Holes are not present and never counted idle or accessed.
    assert not m.present[sd].any() and not m.idle[sd].any() and not m.accessed[sd].any()
    # The RFC layout over mapping a: bit i of the range <-> page i.
    # Start one word early if need be so the page below a is in the words
    # (THP mappings are 2 MiB aligned, so a itself often starts a word).
    lo = (a - PAGE_SIZE) & ~(64 * PAGE_SIZE - 1)
    iw, pw = m.rfc_words(lo, a + na * PAGE_SIZE, holes_idle=True)
    bits = np.unpackbits(iw.view(np.uint8), bitorder="little").astype(bool)
    first = (a - lo) >> PAGE_SHIFT
    assert (bits[first:first + na] == ~want_a).all()
    # The page just below a is never faulted in (the PROT_NONE guard page of
    # the mapping below, or THP alignment padding): a hole, which the RFC
    # layout with holes_idle reads as idle.
    assert bits[first - 1]


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_wss_within_one_percent(thp):
    opt = "thp" if thp else "nothp"
    with Workload() as w:
        a = w.map("a", 64, opt)
        w.touch("a")
        be = PageIdleBackend(_proc(w.pid), tlb_flush="soft-dirty")   # see docs/tlb.md
        be.mark()
        hot = pages(16)
        w.touch("a", 1, 0, hot)
        s = be.sample()
        be.close()
    u = next(u for u in s.by_mapping if u.mapping.start <= a < u.mapping.end)
    assert abs(u.accessed_bytes - 16 * MiB) <= 0.01 * 16 * MiB
    assert u.rss_bytes == 64 * MiB
    # Whole process: 16 MiB plus what the interpreter touched (a few MiB at most).
    assert 16 * MiB <= s.accessed_bytes <= 16 * MiB + 8 * MiB


def _proc(pid):
    from idlemap.kernel.process import identify
    return identify(pid)


def test_sysfs_io_cap_is_handled():
    """Each read()/write() of the bitmap file moves at most 4096 bytes; a
    256 MiB target needs more, so marking must loop or pages stay unmarked."""
    with Workload() as w:
        a = w.map("a", 256)
        w.touch("a")
        with IdleBitmap(w.pid) as bm:
            bm.mark_idle([(a, a + 256 * MiB)])
            m = bm.read([(a, a + 256 * MiB)])
            pfns = _pfns(w.pid, a, pages(256))
    # Precondition: the frames span more than one 4 KiB chunk of the bitmap.
    assert (int(pfns.max()) // 64 - int(pfns.min()) // 64 + 1) * 8 > 4096
    assert m.present.all() and m.idle.all()
    # The kernel behaviour itself: one big pwrite is cut at 4096 bytes.
    fd = os.open(BITMAP_PATH, os.O_RDWR)
    try:
        assert os.pwrite(fd, bytes(16384), 0) == 4096
        assert len(os.pread(fd, 16384, 0)) == 4096
    finally:
        os.close(fd)


def _pfns(pid, addr, n):
    from idlemap.kernel import pagemap as pm
    with pm.Pagemap(pid) as p:
        e = p.read(addr >> PAGE_SHIFT, n)
    return e & pm.PFN_MASK


def test_lru_batches_are_drained():
    """Fresh pages wait in per-CPU LRU batches, invisible to page_idle; the
    mark drains them, so every freshly touched page is marked."""
    for _ in range(5):
        with Workload() as w:
            a = w.map("a", 8 * PAGE_SIZE / MiB)
            w.touch("a")
            with IdleBitmap(w.pid) as bm:
                bm.mark_idle([(a, a + 8 * PAGE_SIZE)])
                m = bm.read([(a, a + 8 * PAGE_SIZE)])
        assert int(m.idle.sum()) == 8


def test_tlb_flush_mitigation():
    """A hot set that fits in the TLB: accesses through cached translations
    do not set the accessed bits page_idle cleared, so hot pages read idle
    unless the TLB is flushed after marking (tlb_flush="soft-dirty")."""
    n = 64
    results = {}
    for mode in ("none", "soft-dirty"):
        hidden = []
        with Workload() as w:
            a = w.map("a", n * PAGE_SIZE / MiB)
            w.touch("a")
            rng = [(a, a + n * PAGE_SIZE)]
            with IdleBitmap(w.pid, tlb_flush=mode) as bm:
                for _ in range(3):
                    w.read("a")                     # warm the TLB
                    bm.mark_idle(rng)
                    w.read("a", 2)                  # the even pages
                    m = bm.read(rng)
                    hidden.append(int(m.idle[0::2].sum()))
                    assert m.idle[1::2].all()       # untouched pages stay idle
        results[mode] = hidden
    print("touched pages read idle per round:", results)
    assert results["soft-dirty"] == [0, 0, 0]


def test_bitmap_command_writes_rfc_layout(tmp_path, capsys):
    with Workload() as w:
        a = w.map("a", 4)
        w.touch("a")
        out = tmp_path / "idle.bin"
        rc = main(["bitmap", str(w.pid), "--range", f"{a:#x}-{a + 4 * MiB:#x}", "--wait", "0", "-o", str(out)])
        assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "idle.bin.json").read_text())
    assert meta["present_pages"] == pages(4) and meta["idle_pages"] == pages(4)
    # Byte offset b covers pages from b*8: page p is bit p%8 of byte p//8.
    first = a >> PAGE_SHIFT
    for path in (out, str(out) + ".present"):
        raw = np.fromfile(path, dtype=np.uint8, offset=first // 8, count=pages(4) // 8 + 1)
        bits = np.unpackbits(raw, bitorder="little")[first % 8:first % 8 + pages(4)]
        assert bits.all()
        # Pages before the range are not in the dump: 0 in both files.
        assert not np.unpackbits(raw[:1], bitorder="little")[:first % 8].any()


def test_target_exit_mid_scan_page_idle():
    with Workload() as w:
        w.map("a", 8)
        w.touch("a")
        p = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", str(w.pid), "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rows = 0
        out = []
        while rows < 2:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            out.append(line)
            rows += line.strip()[:1].isdigit()
        w.kill()
        rest, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err.strip() == f"idlemap: process {w.pid} exited during the scan"
    assert "page_idle backend" in out[0]
    assert "windows of" in rest


def test_thp_split_in_place_is_seen_at_once():
    """A THP split in place keeps its frames, so its pagemap entries do not
    change: only kpageflags tells.  The same IdleBitmap (whose walks reuse
    what unchanged entries gave last time) must see the split at the next
    walk and from then track the 512 pages one by one."""
    from idlemap.kernel import process_madvise as pmad
    H = HPAGE_PAGES * PAGE_SIZE
    with Workload() as w:
        lo = w.map("t", 8, "thp")                   # four 2 MiB THPs
        w.touch("t")
        rng = [(lo, lo + 4 * H)]
        with IdleBitmap(w.pid, tlb_flush="soft-dirty") as bm:
            for _ in range(2):                      # the second walk reuses the first's work
                bm.mark_idle(rng)
                m = bm.read(rng)
            assert m.huge.all() and m.present.all() and m.idle.all()
            # MADV_PAGEOUT of one 4 KiB page of THP 1 splits it (and pages that
            # page out if there is swap; the test VM may have none here).
            pfd = pmad.pidfd_open(w.pid)
            try:
                res = pmad.process_madvise(pfd, w.pid, np.array([lo + H + 7 * PAGE_SIZE]),
                                           np.array([PAGE_SIZE]), pmad.MADV_PAGEOUT)
            finally:
                os.close(pfd)
            assert not res.failed and res.advised_bytes == PAGE_SIZE
            bm.mark_idle(rng)
            first = HPAGE_PAGES + 3                 # another page of the split THP
            w.touch("t", 1, first, 1)
            m = bm.read(rng)
    blk = slice(HPAGE_PAGES, 2 * HPAGE_PAGES)
    assert m.huge[:HPAGE_PAGES].all() and m.huge[2 * HPAGE_PAGES:].all()
    assert not m.huge[blk].any(), "the split THP still reads as huge"
    gone = HPAGE_PAGES + 7
    assert m.present[gone] != m.swapped[gone]      # paged out to swap, or kept (no swap)
    acc = np.flatnonzero(m.accessed)
    assert acc.tolist() == [first], f"accessed pages after the split: {acc[:10].tolist()}"
    others = np.ones(m.npages, bool)
    others[[first, gone]] = False
    assert m.present[others].all() and m.idle[others].all()


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_windows_in_a_row_are_exact_with_idle_frames_left_marked(thp):
    """read(remark=True) re-marks only the frames that read accessed; the
    idle ones keep the mark the kernel left them.  Window after window, with
    the access pattern moving, every window must still be bit for bit the
    pages touched in it -- nothing carried over, nothing lost."""
    opt = "thp" if thp else "nothp"
    g = HPAGE_PAGES if thp else 1           # the unit of one idle flag
    n = 32 * g
    with Workload() as w:
        a = w.map("a", n * PAGE_SIZE / MiB, opt)
        w.touch("a")
        rng = [(a, a + n * PAGE_SIZE)]
        units = n // g
        even = np.arange(units) % 2 == 0
        first8 = np.arange(units) < 8
        patterns = [even, ~even, np.zeros(units, bool), first8, np.ones(units, bool), even]
        with IdleBitmap(w.pid, tlb_flush="soft-dirty") as bm:
            bm.mark_idle(rng)
            frames = bm.last_marked
            assert frames == units
            for i, want_units in enumerate(patterns):
                for u in np.flatnonzero(want_units):
                    w.touch("a", 1, int(u) * g, 1)
                m = bm.read(rng, remark=True)
                assert m.present.all() and bool(m.huge.all()) == thp
                want = np.repeat(want_units, g)
                got = m.accessed
                assert np.array_equal(got, want), \
                    f"window {i}: {np.flatnonzero(got != want)[:10].tolist()} wrong"
                # Only what read accessed was written again.
                assert bm.last_marked == int(want_units.sum()), (i, bm.last_marked)


@pytest.mark.parametrize("ranged", [False, True], ids=["whole", "range"])
def test_read_of_an_exited_target_is_an_exit_not_an_empty_map(ranged):
    """A target that dies inside the window reads as no mappings (its maps
    are empty) or all holes.  That is not a reading: `bitmap -o` would say
    "nothing is mapped" (exit 65) or write a bitmap of zeros over FILE.
    Deterministic: the target is our child, killed and left a zombie."""
    from idlemap.errors import TargetExited
    from idlemap.kernel.tasks import read_task
    child = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time\n"
                              "m = mmap.mmap(-1, 8 << 20); m.write(b'x' * (8 << 20))\n"
                              "print(hex(__import__('ctypes').addressof(__import__('ctypes').c_char.from_buffer(m))), flush=True)\n"
                              "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        addr = int(child.stdout.readline(), 16)
        ranges = [(addr, addr + 8 * MiB)] if ranged else None
        with IdleBitmap(child.pid) as bm:
            bm.mark_idle(ranges)
            child.kill()
            while (t := read_task(child.pid)) is not None and t.state != "Z":
                os.sched_yield()
            with pytest.raises(TargetExited):
                bm.read(ranges)
    finally:
        child.kill()
        child.wait()


def test_range_outside_every_mapping_is_a_usage_error(tmp_path, capsys):
    """--range that covers nothing mapped is the option's fault (exit 2), and nothing is written."""
    with Workload() as w:
        assert main(["bitmap", str(w.pid), "--wait", "0", "--range", "0x1000-0x2000",
                     "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err == "idlemap: nothing is mapped in the given range(s)\n", err
    assert os.listdir(tmp_path) == []
