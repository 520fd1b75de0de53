"""Address arithmetic of the mount's bitmap files (pure parts)."""
from __future__ import annotations

import errno

import numpy as np
import pytest

from idlemap.services import procfiles as pf

MAPS = b"""\
555555554000-555555556000 r--p 00000000 fe:00 1 /usr/bin/cat
7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0                          [vvar]
7ffff7fc5000-7ffff7fc7000 r-xp 00000000 00:00 0                          [vdso]
7ffff7fc7000-7ffff7fc8000 r--p 00000000 fe:00 2 /usr/lib/ld-linux x86-64.so.2
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_file_size_is_the_address_space():
    # (2^47 - 4096) / 4096 pages, 64 per u64 word, rounded up to a word: 4 GiB
    assert pf.TASK_SIZE == 0x7FFFFFFFF000
    assert pf.BITMAP_FILE_BYTES == 1 << 32


def test_parse_mapped_skips_kernel_pages():
    assert pf.parse_mapped(MAPS) == [(0x555555554000, 0x555555556000), (0x7FFFF7FC7000, 0x7FFFF7FC8000),
                                     (0x7FFFFFFDE000, 0x7FFFFFFFF000)]


def test_va_range_rfc_offsets():
    # byte offset b covers virtual pages from b*8
    assert pf.va_range(8, 8) == (64 * 4096, 128 * 4096)
    with pytest.raises(pf.FileOpError) as e:
        pf.check_aligned(4, 8)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(pf.FileOpError):
        pf.check_aligned(8, 12)


def test_word_cover_merges_and_clips():
    W = pf.WORD_VA
    pieces = [(W + 4096, W + 8192), (W + 3 * 4096, 2 * W + 1), (5 * W, 9 * W)]
    assert pf.word_cover(pieces, 0, 6 * W) == [(W, 3 * W), (5 * W, 6 * W)]
    assert pf.word_cover(pieces, 3 * W, 5 * W) == []


def test_widen_huge():
    H = 2 << 20
    assert pf.widen_huge(H + 4096, 3 * H - 4096) == (H, 3 * H)


def test_bits_of_rfc_layout():
    w = np.array([0b1011, 1 << 63], dtype=np.uint64)
    b = pf.bits_of(w)
    assert b.size == 128 and b[:4].tolist() == [True, True, False, True] and b[127] and not b[64]


def test_fill_bytes_reuses_one_buffer():
    a = pf.fill_bytes(0xFF, 4096)
    b = pf.fill_bytes(0xFF, 8192)
    assert bytes(a) == b"\xff" * 4096 and len(b) == 8192
    assert bytes(pf.fill_bytes(0, 16)) == bytes(16)


def test_errno_of():
    from idlemap.errors import AccessDenied, FeatureMissing, TargetExited
    assert pf.errno_of(TargetExited(5)) == errno.ESRCH
    assert pf.errno_of(AccessDenied("x")) == errno.EACCES
    assert pf.errno_of(FeatureMissing("page_idle", "CONFIG_IDLE_PAGE_TRACKING")) == errno.EOPNOTSUPP
    assert pf.errno_of(pf.FileOpError(errno.EINVAL, "x")) == errno.EINVAL
    assert pf.errno_of(RuntimeError()) == errno.EIO
