"""Pure helpers over mappings and pagemap entries: which VA spans to walk
(:func:`spans_for`), one range-merge (:func:`merge_ranges`) and the shape
test for PMD-mapped THPs (:func:`find_huge_blocks`).  No I/O: the page-idle
walk (bitmap.py), the system scan, the DAMON backend and the actions share
them."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..kernel import pagemap as pm
from ..kernel.frames import index_in_runs
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping, trackable
from ..records import Span

HPAGE_PAGES = (2 << 20) // PAGE_SIZE      # 512 on x86-64

_KEEP = pm.PRESENT | pm.PFN_MASK
_PRESENT_BIT = pm.PRESENT
_HMASK = np.uint64(HPAGE_PAGES - 1)
_HLAST = np.uint64(HPAGE_PAGES - 1)
_HAR = np.arange(HPAGE_PAGES, dtype=np.uint64)


def merge_ranges(ranges: Iterable[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """Sorted, non-overlapping VA ranges (overlaps would count pages twice;
    touching ranges merge too).  None stays None (no restriction)."""
    if ranges is None:
        return None
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def spans_for(maps: Sequence[Mapping], ranges: Iterable[tuple[int, int]] | None) -> list[Span]:
    """Intersect mappings with VA ranges (None: whole mappings), in VA order."""
    out: list[Span] = []
    offset = 0
    rs = None if ranges is None else sorted((int(a), int(b)) for a, b in ranges)
    for m in maps:
        if not trackable(m):
            continue
        pieces = [(m.start, m.end)] if rs is None else [
            (max(m.start, a), min(m.end, b)) for a, b in rs if a < m.end and b > m.start]
        for lo, hi in pieces:
            lo = lo & ~(PAGE_SIZE - 1)
            hi = (hi + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if lo < hi:
                out.append(Span(m, lo, hi, offset))
                offset += (hi - lo) >> PAGE_SHIFT
    return out


def block_starts(spans: Sequence[Span]) -> np.ndarray:
    """Flat index of the first page of every 2 MiB-aligned block of 512
    pages that lies wholly inside one span, ascending."""
    starts, counts = [], []
    for s in spans:
        npages = s.npages
        if npages >= HPAGE_PAGES:
            a0 = (-s.first_vpn) % HPAGE_PAGES
            nb = (npages - a0) // HPAGE_PAGES
            if nb > 0:
                starts.append(s.offset + a0)
                counts.append(nb)
    if not starts:
        return np.empty(0, np.int64)
    return np.repeat(np.array(starts, np.int64), counts) + index_in_runs(counts) * HPAGE_PAGES


# Candidate blocks are checked this many at a time in a reused buffer (256
# KiB of entries): no fresh 2 MiB temporaries per GiB of THP to fault in.
CHECK_BLOCKS = 64

try:        # memcmp: the cheapest exact "same bytes as last walk?" (~2x numpy's pass)
    import ctypes
    memcmp = ctypes.CDLL(None).memcmp
    memcmp.restype = ctypes.c_int
    memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
except (ImportError, OSError, AttributeError, TypeError):     # pragma: no cover
    memcmp = None


class BlockMemo:
    """The verdicts of the last walk's 512-entry checks, with a copy of the
    entries they were made on: a chunk of candidate blocks whose entries
    are byte-for-byte the same gets the same verdict (it is a function of
    those entries alone) without the check's three passes over them."""

    __slots__ = ("prev", "chunks")

    def __init__(self):
        self.prev = np.empty(0, np.uint64)
        self.chunks: dict[int, tuple[int, np.ndarray]] = {}


def find_huge_blocks(spans: Sequence[Span], entries: np.ndarray, blocks: np.ndarray | None = None,
                     scratch: np.ndarray | None = None, memo: BlockMemo | None = None) -> np.ndarray:
    """Flat indices of the first page of every 2 MiB-aligned run of 512
    present pages whose frames are consecutive from a 512-aligned frame:
    the shape of a PMD-mapped THP.  Callers confirm with kpageflags.

    ``blocks`` (``block_starts(spans)``, when the caller keeps it between
    walks), ``scratch`` (a uint64 buffer of at least 64*512 entries) and
    ``memo`` (kept between walks of the same process) only save work."""
    if blocks is None:
        blocks = block_starts(spans)
    if not blocks.size:
        return np.empty(0, np.int64)
    # Filter every aligned block on two entries: head present on a
    # 512-aligned frame, last page 511 frames on.
    hk = entries[blocks] & _KEEP
    ok = (hk >= _PRESENT_BIT) & ((hk & _HMASK) == 0) & ((entries[blocks + (HPAGE_PAGES - 1)] & _KEEP) == hk + _HLAST)
    cand = blocks[ok]
    if not cand.size:
        return cand
    if scratch is None or scratch.size < CHECK_BLOCKS * HPAGE_PAGES:
        scratch = np.empty(CHECK_BLOCKS * HPAGE_PAGES, np.uint64)
    good = np.empty(cand.size, np.bool_)
    hi = np.empty(CHECK_BLOCKS, np.uint64)
    lo = np.empty(CHECK_BLOCKS, np.uint64)
    if memo is not None and memcmp is not None:
        if memo.prev.size < entries.size:
            memo.prev = np.empty(entries.size + entries.size // 8, np.uint64)
            memo.chunks = {}
        old, new = memo.chunks, {}
        ep, pp = entries.ctypes.data, memo.prev.ctypes.data
    else:
        memo = None
    # Check the candidates in runs of adjacent blocks, as (n, 512) views.
    # Entry j of a THP must be the head's entry + j in the present bit and
    # the frame (PTE-mapped pieces of a THP may differ in soft-dirty or
    # exclusive bits).  The head's frame is 512-aligned, so + j is XOR j:
    # entry_j XOR j must equal the head's entry in every bit of _KEEP, i.e.
    # the row's OR and AND agree on them (row j=0 is the head itself).
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(cand) != HPAGE_PAGES) + 1, [cand.size])).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        for c in range(a, b, CHECK_BLOCKS):
            d = min(b, c + CHECK_BLOCKS)
            nb = d - c
            base = int(cand[c])
            if memo is not None:
                hit = old.get(base)
                if hit is not None and hit[0] == nb and \
                        memcmp(ep + 8 * base, pp + 8 * base, 8 * nb * HPAGE_PAGES) == 0:
                    good[c:d] = hit[1]
                    new[base] = hit
                    continue
            sub = entries[base:base + nb * HPAGE_PAGES].reshape(nb, HPAGE_PAGES)
            sc = scratch[:nb * HPAGE_PAGES].reshape(nb, HPAGE_PAGES)
            np.bitwise_xor(sub, _HAR, out=sc)
            h = np.bitwise_or.reduce(sc, axis=1, out=hi[:nb])
            l_ = np.bitwise_and.reduce(sc, axis=1, out=lo[:nb])
            np.bitwise_xor(h, l_, out=h)
            np.bitwise_and(h, _KEEP, out=h)
            np.equal(h, 0, out=good[c:d])
            if memo is not None:
                memo.prev[base:base + nb * HPAGE_PAGES] = entries[base:base + nb * HPAGE_PAGES]
                new[base] = (nb, good[c:d].copy())
    if memo is not None:
        memo.chunks = new
    return cand[good]
