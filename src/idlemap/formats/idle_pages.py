"""The ``idle_pages`` run-length format: encoder and decoder (pure numpy).

The RFC's follow-up replaced the bitmap (one bit per 4 KiB page, huge for
sparse address spaces) by a byte stream of extents.  Our layout, documented
for tool writers in docs/idle_pages.md:

  one byte per extent: type in the high nibble, count (1..15) in the low one

    0x0_  PTE_ACCESSED  count 4 KiB pages, present, accessed since the mark
    0x1_  PTE_IDLE      count 4 KiB pages, present, idle
    0x2_  PTE_HOLE      count 4 KiB pages, nothing present
    0x3_  PMD_ACCESSED  count 2 MiB transparent huge pages, accessed
    0x4_  PMD_IDLE      count 2 MiB transparent huge pages, idle
    0x5_  PMD_HOLE      count 2 MiB-aligned 2 MiB ranges with nothing present
    0x6_-0xE_           reserved: a decoder must reject them
    0xF0  SET_VA        followed by the next extent's virtual address as a
                        little-endian u64 (9 bytes in all)
    0xF1-0xFF           reserved

Every extent starts where the previous one ended; unmapped address space
between mappings is skipped with SET_VA, so "hole" always means a page of a
mapping with nothing behind it (never touched, swapped out, or freed).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

PTE_ACCESSED, PTE_IDLE, PTE_HOLE, PMD_ACCESSED, PMD_IDLE, PMD_HOLE = range(6)
CMD = 0xF
SET_VA = 0xF0
SET_VA_BYTES = 9
MAX_COUNT = 15
PAGE_SHIFT = 12
HPAGE_PAGES = 512                       # 2 MiB / 4 KiB
TYPE_NAMES = ("PTE_ACCESSED", "PTE_IDLE", "PTE_HOLE", "PMD_ACCESSED", "PMD_IDLE", "PMD_HOLE")
# pages (of 4 KiB) one count of each type stands for
_TYPE_PAGES = np.array([1, 1, 1, HPAGE_PAGES, HPAGE_PAGES, HPAGE_PAGES], dtype=np.int64)
_TYPE_IDLE = np.array([0, 1, 1, 0, 1, 1], dtype=bool)      # holes read idle, as in the RFC bitmap
_TYPE_PRESENT = np.array([1, 1, 0, 1, 1, 0], dtype=bool)


class FormatError(ValueError):
    """The bytes are not a valid idle_pages stream."""


def set_va(va: int) -> bytes:
    return bytes([SET_VA]) + struct.pack("<Q", va)


@dataclass(slots=True)
class Encoded:
    """Extent bytes for one contiguous stretch of address space, with the
    address reached after each byte (where a reader may be cut off)."""
    start_va: int
    codes: np.ndarray        # uint8, extents only (no commands)
    ends: np.ndarray         # uint64, VA after each byte

    @property
    def end_va(self) -> int:
        return int(self.ends[-1]) if self.ends.size else self.start_va


def page_types(present: np.ndarray, idle: np.ndarray) -> np.ndarray:
    """Per-page 4 KiB type: accessed / idle / hole."""
    return np.where(present, np.where(idle, PTE_IDLE, PTE_ACCESSED), PTE_HOLE).astype(np.uint8)


def encode_span(start_va: int, present: np.ndarray, idle: np.ndarray, huge: np.ndarray) -> Encoded:
    """Encode the pages [start_va, start_va + n*4K) of one mapping.

    ``huge`` marks pages of transparent huge pages: only whole, 2 MiB-aligned
    blocks inside the span count as PMD extents (that is how the kernel maps
    them); a 2 MiB-aligned block with nothing present becomes one PMD_HOLE.
    """
    if start_va % (1 << PAGE_SHIFT):
        raise ValueError("start_va must be page aligned")
    n = int(present.size)
    if n == 0:
        return Encoded(start_va, np.zeros(0, np.uint8), np.zeros(0, np.uint64))
    unit = page_types(present, idle)
    is_start = np.ones(n, dtype=bool)
    first_vpn = start_va >> PAGE_SHIFT
    a0 = (-first_vpn) % HPAGE_PAGES
    nb = (n - a0) // HPAGE_PAGES if n > a0 else 0
    if nb > 0:
        blk = slice(a0, a0 + nb * HPAGE_PAGES)
        thp = huge[blk].reshape(nb, HPAGE_PAGES).all(axis=1)
        empty = ~present[blk].reshape(nb, HPAGE_PAGES).any(axis=1) & ~thp
        big = thp | empty
        if big.any():
            head_idle = idle[blk].reshape(nb, HPAGE_PAGES)[:, 0]
            big_type = np.where(thp, np.where(head_idle, PMD_IDLE, PMD_ACCESSED), PMD_HOLE)
            heads = a0 + np.flatnonzero(big) * HPAGE_PAGES
            unit[heads] = big_type[big]
            inner = np.zeros((nb, HPAGE_PAGES), dtype=bool)
            inner[big, 1:] = True
            is_start[blk] &= ~inner.ravel()
    units = unit[is_start]
    # Run-length: runs of equal type, each cut into bytes of at most 15.
    change = np.flatnonzero(units[1:] != units[:-1]) + 1
    run_start = np.concatenate(([0], change))
    run_len = np.diff(np.concatenate((run_start, [units.size])))
    run_type = units[run_start].astype(np.uint8)
    nbytes = (run_len + MAX_COUNT - 1) // MAX_COUNT
    codes = np.repeat((run_type << 4) | MAX_COUNT, nbytes).astype(np.uint8)
    last = np.cumsum(nbytes) - 1
    codes[last] = (run_type << 4) | (run_len - MAX_COUNT * (nbytes - 1)).astype(np.uint8)
    pages = (codes & 0x0F).astype(np.int64) * _TYPE_PAGES[codes >> 4]
    ends = (np.uint64(start_va) + (np.cumsum(pages) << PAGE_SHIFT).astype(np.uint64))
    return Encoded(start_va, codes, ends)


def encode(spans) -> bytes:
    """A whole stream from (start_va, present, idle, huge) tuples in VA order:
    SET_VA first, then extents, SET_VA again wherever the address jumps."""
    out = bytearray()
    va = None
    for start_va, present, idle, huge in spans:
        e = encode_span(start_va, present, idle, huge)
        if e.codes.size == 0:
            continue
        if va != start_va:
            out += set_va(start_va)
        out += e.codes.tobytes()
        va = e.end_va
    return bytes(out)


@dataclass(slots=True)
class Extents:
    """A decoded stream: one row per extent byte, in stream order."""
    va: np.ndarray           # uint64 start address
    kind: np.ndarray         # uint8, PTE_ACCESSED..PMD_HOLE
    count: np.ndarray        # uint8, 1..15

    @property
    def npages(self) -> np.ndarray:
        """Length of each extent in 4 KiB pages."""
        return self.count.astype(np.int64) * _TYPE_PAGES[self.kind]

    def bytes_by_kind(self) -> dict[str, int]:
        sizes = self.npages << PAGE_SHIFT
        return {TYPE_NAMES[k]: int(sizes[self.kind == k].sum()) for k in range(len(TYPE_NAMES))}


def decode(data: bytes | bytearray | memoryview) -> Extents:
    """Decode a stream (or several reads' worth, concatenated)."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    cand = np.flatnonzero((buf >> 4) == CMD)      # commands, and payload bytes that look like them
    vas, kinds, counts = [], [], []
    va: int | None = None
    i = 0
    n = buf.size
    while i < n:
        k = int(np.searchsorted(cand, i))
        j = int(cand[k]) if k < cand.size else n         # next command at or after i
        if j > i:
            seg = buf[i:j]
            kind = seg >> 4
            count = seg & 0x0F
            if (kind > PMD_HOLE).any():
                bad = i + int(np.flatnonzero(kind > PMD_HOLE)[0])
                raise FormatError(f"reserved extent type {buf[bad] >> 4:#x} at byte {bad}")
            if (count == 0).any():
                bad = i + int(np.flatnonzero(count == 0)[0])
                raise FormatError(f"extent with count 0 at byte {bad}")
            if va is None:
                raise FormatError("the stream does not start with SET_VA")
            size = (count.astype(np.int64) * _TYPE_PAGES[kind]) << PAGE_SHIFT
            starts = va + np.concatenate(([0], np.cumsum(size)[:-1]))
            vas.append(starts.astype(np.uint64))
            kinds.append(kind)
            counts.append(count)
            va = int(va + size.sum())
        if j >= n:
            break
        if buf[j] != SET_VA:
            raise FormatError(f"unknown command {buf[j]:#04x} at byte {j}")
        if j + SET_VA_BYTES > n:
            raise FormatError(f"SET_VA at byte {j} is cut short")
        va = struct.unpack_from("<Q", buf, j + 1)[0]
        if va % (1 << PAGE_SHIFT):
            raise FormatError(f"SET_VA {va:#x} at byte {j} is not page aligned")
        i = j + SET_VA_BYTES
    if not vas:
        return Extents(np.zeros(0, np.uint64), np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    return Extents(np.concatenate(vas), np.concatenate(kinds), np.concatenate(counts))


def to_bitmaps(ext: Extents, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(idle, present) u64 words in the RFC layout for VA [start, end): what
    ``idle_bitmap`` and ``present_bitmap`` hold for that range.  Addresses
    no extent covers (unmapped) read idle and not present, like holes."""
    if start % (64 << PAGE_SHIFT) or end % (64 << PAGE_SHIFT) or end < start:
        raise ValueError("range must be aligned to 64 pages (one u64 word)")
    base, npg = start >> PAGE_SHIFT, (end - start) >> PAGE_SHIFT
    idle = np.ones(npg, dtype=bool)
    present = np.zeros(npg, dtype=bool)
    if ext.kind.size:
        lens = ext.npages
        first = (ext.va >> np.uint64(PAGE_SHIFT)).astype(np.int64) - base
        keep = (first < npg) & (first + lens > 0)
        first, lens, kind = first[keep], lens[keep], ext.kind[keep]
        if kind.size:
            # Expand extents to pages, then drop pages outside the range.
            page = np.repeat(first - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(lens.sum())
            pk = np.repeat(kind, lens)
            inside = (page >= 0) & (page < npg)
            idle[page[inside]] = _TYPE_IDLE[pk[inside]]
            present[page[inside]] = _TYPE_PRESENT[pk[inside]]
    return (np.packbits(idle, bitorder="little").view(np.uint64),
            np.packbits(present, bitorder="little").view(np.uint64))
