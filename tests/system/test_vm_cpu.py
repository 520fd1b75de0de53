"""The test VM's emulated CPU does not crash code that is correct on hardware.

QEMU 7.2's TCG emulates AVX2 masked loads (vpmaskmov) without suppressing
faults on masked-off elements, which hardware does.  numpy's AVX2 sort reads
the tail of an array that way, so sorting an array that ends just before an
unmapped page killed the guest process with SIGSEGV -- in one CI run that
was the FUSE daemon, mid-read, and every mount test after it failed.  The
harness therefore gives the guest ``-cpu max,-avx2`` under TCG
(idlemap.testvm).  This test keeps that true: the same sorts, in a child so
that a segfault fails the test instead of ending pytest.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, mmap
import numpy as np
libc = ctypes.CDLL(None, use_errno=True)
rng = np.random.default_rng(1)
PAGE = mmap.PAGESIZE
for dtype in (np.uint64, np.int64, np.float64, np.uint32):
    size = np.dtype(dtype).itemsize
    for n in list(range(1, 130)) + [1000, 4097]:
        npages = -(-n * size // PAGE) + 1
        m = mmap.mmap(-1, npages * PAGE)
        base = ctypes.addressof((ctypes.c_char * (npages * PAGE)).from_buffer(m))
        # The page after the array: no access at all.
        assert libc.mprotect(ctypes.c_void_p(base + (npages - 1) * PAGE), ctypes.c_size_t(PAGE), 0) == 0
        a = np.frombuffer(m, dtype=dtype, count=n, offset=(npages - 1) * PAGE - n * size)
        a[:] = rng.integers(0, 1 << 30, n).astype(dtype)
        a.sort()
        assert (a[1:] >= a[:-1]).all()
print("sorted")
"""


@pytest.mark.vm
def test_sort_of_an_array_ending_at_an_unmapped_page_does_not_fault():
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "sorted", (
        f"exit {p.returncode} (-11: SIGSEGV -- the guest CPU has AVX2 again?): {p.stderr[-2000:]}")
