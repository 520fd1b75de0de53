"""Typed records passed between layers (kernel -> backends -> analysis -> render):
what a window measured (WssSample, IdleMap, MappingUsage) and what a
scanner or a record file hands on (Round, PackedRound)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping


@dataclass(frozen=True, slots=True)
class Span:
    """A range of virtual pages of one mapping, and where its pages sit in
    the flat per-page arrays of an :class:`IdleMap`."""
    mapping: Mapping
    start: int            # VA of the first page
    end: int              # VA past the last page
    offset: int           # index of the first page in the flat arrays

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def first_vpn(self) -> int:
        return self.start >> PAGE_SHIFT


@dataclass(slots=True)
class IdleMap:
    """One reading of a process's pages, indexed by virtual address.

    Per page (flat arrays, one entry per page of every span, in VA order):
    ``present`` (a frame is mapped), ``idle`` (present and not accessed since
    the last mark; THP tails share their head's answer), ``huge`` (part of a
    transparent huge page) and ``swapped``.  The arrays may be read-only
    (IdleBitmap shares present/huge/swapped between reads of an unchanged
    memory map): copy before changing one.
    """
    pid: int
    spans: list[Span]
    present: np.ndarray
    idle: np.ndarray
    huge: np.ndarray
    swapped: np.ndarray
    time_s: float          # CLOCK_MONOTONIC of the read
    window_s: float        # seconds since the pages were marked idle

    @property
    def npages(self) -> int:
        return int(self.present.size)

    @property
    def accessed(self) -> np.ndarray:
        return self.present & ~self.idle

    def vpns(self) -> np.ndarray:
        """Virtual page number of every entry of the flat arrays."""
        out = np.empty(self.npages, dtype=np.int64)
        for s in self.spans:
            out[s.offset:s.offset + s.npages] = np.arange(s.first_vpn, s.first_vpn + s.npages)
        return out

    def span_slice(self, s: Span) -> slice:
        return slice(s.offset, s.offset + s.npages)

    def rfc_words(self, start: int, end: int, holes_idle: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(idle, present) bitmaps for VA [start, end) in the RFC layout.

        u64 words, 64 pages per word, page i of the range -> bit i%64 of word
        i/64; ``start`` must be 64-page aligned so that byte offset b of the
        result covers virtual addresses ``start + (b << (3 + PAGE_SHIFT))``.
        With ``holes_idle`` (the RFC's own semantics) pages that are not
        present read as idle; the present bitmap tells them apart.
        """
        if start % (64 * PAGE_SIZE) or end % PAGE_SIZE or end < start:
            raise ValueError("range must start on a 64-page boundary and end on a page boundary")
        n = (end - start) >> PAGE_SHIFT
        nwords = (n + 63) // 64
        idle = np.zeros(nwords * 64, dtype=bool)
        present = np.zeros(nwords * 64, dtype=bool)
        if holes_idle:
            idle[:n] = True
        base = start >> PAGE_SHIFT
        for s in self.spans:
            lo, hi = max(s.start, start), min(s.end, end)
            if lo >= hi:
                continue
            a = (lo >> PAGE_SHIFT) - base
            b = (hi >> PAGE_SHIFT) - base
            src = slice(s.offset + (lo - s.start >> PAGE_SHIFT), s.offset + (hi - s.start >> PAGE_SHIFT))
            p = self.present[src]
            present[a:b] = p
            idle[a:b] = self.idle[src] | (~p if holes_idle else False)
        return (np.packbits(idle, bitorder="little").view(np.uint64),
                np.packbits(present, bitorder="little").view(np.uint64))


@dataclass(frozen=True, slots=True)
class MappingUsage:
    """Totals for one mapping in one window; bytes throughout."""
    mapping: Mapping
    rss_bytes: int
    pss_bytes: int
    accessed_bytes: int       # Referenced (clear_refs) or present-and-not-idle (page_idle)
    idle_bytes: int           # present but not accessed (-1 where unknown)
    swap_bytes: int = 0


@dataclass(slots=True)
class WssSample:
    """The working set of one window."""
    pid: int
    backend: str
    time_s: float             # monotonic clock at the end of the window
    window_s: float           # measured length of the window (Gregg's Est(s))
    rss_bytes: int
    pss_bytes: int
    accessed_bytes: int       # the working set (Gregg's Ref)
    by_mapping: list[MappingUsage] = field(default_factory=list)
    idle_map: IdleMap | None = None   # per-page detail, page-granular backends only
    scan_s: float = 0.0       # CPU-time cost of reading this window

    @property
    def idle_bytes(self) -> int:
        return max(0, self.rss_bytes - self.accessed_bytes)


# Mapping kinds (kernel/maps.py) counted as file-backed in the anon/file
# split: their pages are in the page cache (shmem is "file" to the kernel
# too: pagemap bit 61, and it is reclaimed by swapping the page cache).
FILE_KINDS = frozenset({"file", "shmem"})


def usage_key(u: MappingUsage) -> tuple[int, str]:
    """How a mapping is recognised across rounds: its start and label (the
    heap keeps its start while its end grows)."""
    return (u.mapping.start, u.mapping.label)


@dataclass(frozen=True, slots=True)
class Round:
    """One scan window, from a live scanner or read back from a record.

    ``sample`` is what the backend measured for the window that ended at
    ``sample.time_s`` (CLOCK_MONOTONIC of the scanning host); per-page
    detail is in ``sample.idle_map`` for page-granular backends, ``None``
    for mapping-granular ones (clear_refs).
    """
    index: int                # 0-based round number
    wall_time_s: float        # time.time() when the window closed
    sample: WssSample

    @property
    def idle_map(self) -> IdleMap | None:
        return self.sample.idle_map

    @property
    def accessed_bytes(self) -> int:
        return self.sample.accessed_bytes

    @property
    def anon_accessed_bytes(self) -> int:
        return sum(u.accessed_bytes for u in self.sample.by_mapping if u.mapping.kind not in FILE_KINDS)

    @property
    def file_accessed_bytes(self) -> int:
        return sum(u.accessed_bytes for u in self.sample.by_mapping if u.mapping.kind in FILE_KINDS)


@dataclass(frozen=True)
class PackedRound:
    """A per-page round as stored: packed bit rows (little bit order, the
    RFC's) over ``spans``, for bulk analysis (analysis.hotness.build_history)
    without unpacking and repacking every page."""
    index: int
    wall_time_s: float
    time_s: float
    window_s: float
    pss_bytes: int
    scan_s: float
    spans: list[Span]
    npages: int
    accessed: np.ndarray
    present: np.ndarray
    huge: np.ndarray
    swapped: np.ndarray

    def unpacked(self, which: str) -> np.ndarray:
        return np.unpackbits(getattr(self, which), count=self.npages, bitorder="little").view(bool)
