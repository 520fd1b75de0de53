"""Pure parts of the bitmap: RFC layout, run planning, THP shape detection."""
import numpy as np
import pytest

from idlemap.analysis.spans import HPAGE_PAGES, find_huge_blocks, spans_for
from idlemap.kernel import pagemap as pm
from idlemap.kernel.frames import buffer_index, word_runs
from idlemap.kernel.maps import PAGE_SIZE, Mapping
from idlemap.records import IdleMap, Span

P = PAGE_SIZE


def mapping(start, end, kind="anon"):
    return Mapping(start, end, "rw-p", 0, "00:00", 0, "", kind)


def test_spans_for_intersects_and_orders():
    maps = [mapping(0x10000, 0x20000), mapping(0x30000, 0x40000), mapping(0x50000, 0x51000, "vvar")]
    spans = spans_for(maps, None)
    assert [(s.start, s.end, s.offset) for s in spans] == [(0x10000, 0x20000, 0), (0x30000, 0x40000, 16)]
    spans = spans_for(maps, [(0x1f000, 0x31000)])
    assert [(s.start, s.end, s.offset) for s in spans] == [(0x1f000, 0x20000, 0), (0x30000, 0x31000, 1)]
    # Unaligned range ends round outward to whole pages.
    spans = spans_for(maps, [(0x10001, 0x10002)])
    assert [(s.start, s.end) for s in spans] == [(0x10000, 0x11000)]


def _map(spans, present, idle):
    n = len(present)
    z = np.zeros(n, bool)
    return IdleMap(1, spans, np.array(present, bool), np.array(idle, bool), z, z, 0.0, 0.0)


def test_rfc_words_layout():
    # 130 pages mapped from VA 64*P*2 (word 2): pattern idle on every 3rd page.
    start = 128 * P
    n = 130
    m = mapping(start, start + n * P)
    present = np.ones(n, bool)
    present[5] = False                       # a hole inside the mapping
    idle = (np.arange(n) % 3 == 0) & present
    im = _map([Span(m, m.start, m.end, 0)], present, idle)
    iw, pw = im.rfc_words(0, 512 * P, holes_idle=False)
    assert iw.dtype == np.uint64 and iw.size == 8
    bits_idle = np.unpackbits(iw.view(np.uint8), bitorder="little").astype(bool)
    bits_present = np.unpackbits(pw.view(np.uint8), bitorder="little").astype(bool)
    assert not bits_idle[:128].any() and not bits_present[:128].any()
    assert (bits_idle[128:128 + n] == idle).all()
    assert (bits_present[128:128 + n] == present).all()
    # Word-level check of the RFC rule: page i -> bit i%64 of word i/64.
    for i in (128, 131, 200, 257):
        assert bool((int(iw[i // 64]) >> (i % 64)) & 1) == bool(idle[i - 128])
    # RFC semantics: holes (unmapped or not present) read as idle.
    iw2, _ = im.rfc_words(0, 512 * P, holes_idle=True)
    b2 = np.unpackbits(iw2.view(np.uint8), bitorder="little").astype(bool)
    assert b2[:128].all() and b2[128 + 5] and (b2[128:128 + n] == (idle | ~present)).all()
    with pytest.raises(ValueError):
        im.rfc_words(P, 2 * P)


def test_word_runs_merge_and_index():
    words = np.array([1, 2, 3, 10, 11, 100], dtype=np.int64)
    starts, lengths = word_runs(words, max_gap=8)
    assert starts.tolist() == [1, 100] and lengths.tolist() == [11, 1]
    pos = buffer_index(words, starts, lengths)
    assert pos.tolist() == [0, 1, 2, 9, 10, 11]
    starts, lengths = word_runs(words, max_gap=0)
    assert starts.tolist() == [1, 10, 100] and lengths.tolist() == [3, 2, 1]


def test_find_huge_blocks_shape():
    base_vpn = 1024                           # 2 MiB aligned (1024 % 512 == 0)
    n = 3 * HPAGE_PAGES
    m = mapping(base_vpn * P, (base_vpn + n) * P)
    e = np.zeros(n, np.uint64)
    # Block 0: a THP (consecutive frames from an aligned frame).
    e[:512] = (np.arange(512, dtype=np.uint64) + np.uint64(4096)) | pm.PRESENT
    # Block 1: consecutive but misaligned frames: not a THP.
    e[512:1024] = (np.arange(512, dtype=np.uint64) + np.uint64(5001)) | pm.PRESENT
    # Block 2: aligned but one page missing.
    e[1024:] = (np.arange(512, dtype=np.uint64) + np.uint64(8192)) | pm.PRESENT
    e[1030] = 0
    heads = find_huge_blocks([Span(m, m.start, m.end, 0)], e)
    assert heads.tolist() == [0]
