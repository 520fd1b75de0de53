"""Big PROT_NONE reservations (JVM/Go/V8 heaps, malloc arenas) on a real
kernel with page_idle: an empty one costs no pagemap walk and reads as a
hole; one that holds pages (mprotect(PROT_NONE) over touched memory) is
still walked and its pages reported.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from idlemap.bitmap import IdleBitmap
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.kernel.page_idle import PATH as BITMAP_PATH

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB, GiB = 1 << 20, 1 << 30

CHILD = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def reserve(size):
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # NORESERVE
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))
MiB, GiB = 1 << 20, 1 << 30
r, a = reserve(64 * GiB)                     # 4 MiB used, the rest PROT_NONE and empty
assert libc.mprotect(a + 4 * MiB, 64 * GiB - 4 * MiB, 0) == 0
ctypes.memset(a, 1, 4 * MiB)
q, b = reserve(1 * GiB)                      # 1 MiB touched, then all of it PROT_NONE
ctypes.memset(b, 1, 1 * MiB)
assert libc.mprotect(b, 1 * GiB, 0) == 0
print(hex(a), hex(b), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def reserved():
    p = subprocess.Popen([sys.executable, "-S", "-c", CHILD], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        a, b = (int(x, 16) for x in p.stdout.readline().split())
        yield p.pid, a, b
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def pages_in(m, lo, hi):
    """(present, idle) of VA [lo, hi) from an IdleMap; holes read not present."""
    n = (hi - lo) >> PAGE_SHIFT
    present, idle = np.zeros(n, bool), np.zeros(n, bool)
    for s in m.spans:
        a, b = max(s.start, lo), min(s.end, hi)
        if a < b:
            src = slice(s.offset + ((a - s.start) >> PAGE_SHIFT), s.offset + ((b - s.start) >> PAGE_SHIFT))
            dst = slice((a - lo) >> PAGE_SHIFT, (b - lo) >> PAGE_SHIFT)
            present[dst], idle[dst] = m.present[src], m.idle[src]
    return present, idle


def test_empty_reservation_is_a_hole_and_a_populated_one_is_walked(reserved):
    pid, a, b = reserved
    with IdleBitmap(pid) as bm:
        bm.mark_idle()
        m = bm.read()
    # the empty 64 GiB - 4 MiB: no span, so no 16 Mi pagemap entries read
    assert not any(s.start < a + 64 * GiB and s.end > a + 4 * MiB for s in m.spans)
    assert m.npages < (1 << 20)
    present, _ = pages_in(m, a, a + 8 * MiB)
    assert present[:1024].all() and not present[1024:].any()
    # the populated PROT_NONE mapping: walked, its 256 pages present, and
    # idle (the process cannot touch them)
    assert any(s.start <= b < s.end for s in m.spans)
    present, idle = pages_in(m, b, b + GiB)
    assert np.count_nonzero(present) == 256 and present[:256].all()
    assert idle[:256].all()
    # the RFC layout over the reservation: the hole reads not present
    lo = a & ~(64 * 4096 - 1)
    idle_w, present_w = m.rfc_words(lo, a + 4 * GiB)
    assert int(np.unpackbits(present_w.view(np.uint8)).sum()) == 1024


def test_ranges_inside_an_empty_reservation(reserved):
    pid, a, _ = reserved
    with IdleBitmap(pid) as bm:
        m = bm.read([(a, a + GiB)])
    assert [(s.start, s.end) for s in m.spans] == [(a, a + 4 * MiB)]
    assert m.present.all()
