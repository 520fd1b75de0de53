"""Per-mapping totals from per-page bits, vectorised (one reduceat per bit
array instead of three count_nonzero calls per span)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..kernel.maps import PAGE_SHIFT
from ..records import IdleMap, MappingUsage, Span


def mapping_usage(spans: Sequence[Span], present: np.ndarray, accessed: np.ndarray,
                  swapped: np.ndarray) -> list[MappingUsage]:
    """Per-mapping totals (spans of one mapping merged, PSS unknown: -1)
    from flat bool arrays laid out as ``spans``."""
    if not spans:
        return []
    offs = np.fromiter((s.offset for s in spans), dtype=np.int64, count=len(spans))
    ends = offs + np.fromiter((s.npages for s in spans), dtype=np.int64, count=len(spans))
    if offs[0] == 0 and ends[-1] == present.size and (ends > offs).all() and (offs[1:] == ends[:-1]).all():
        # The spans tile the arrays (the usual case): one reduceat per array.
        p = np.add.reduceat(present, offs, dtype=np.int64).tolist()
        a = np.add.reduceat(accessed, offs, dtype=np.int64).tolist()
        w = np.add.reduceat(swapped, offs, dtype=np.int64).tolist()
    else:
        # Gaps, empty spans or a tail past the last span: reduceat would
        # count what lies outside the spans, prefix sums do not.
        def counts(arr: np.ndarray) -> list[int]:
            cs = np.concatenate(([0], np.cumsum(arr, dtype=np.int64)))
            return (cs[ends] - cs[offs]).tolist()
        p, a, w = counts(present), counts(accessed), counts(swapped)
    return _merge(spans, p, a, w)


def idle_map_usage(m: IdleMap) -> list[MappingUsage]:
    """Per-mapping totals of one per-page reading: present, accessed
    (present and not idle) and swapped pages."""
    return mapping_usage(m.spans, m.present, m.accessed, m.swapped)


def _merge(spans: Sequence[Span], p: list[int], a: list[int], w: list[int]) -> list[MappingUsage]:
    """Page counts per span -> one MappingUsage per mapping."""
    acc: dict[int, list] = {}
    for s, pi, ai, wi in zip(spans, p, a, w):
        cur = acc.get(s.mapping.start)
        if cur is None:
            acc[s.mapping.start] = [s.mapping, pi, ai, wi]
        else:
            cur[1] += pi
            cur[2] += ai
            cur[3] += wi
    return [MappingUsage(m, pi << PAGE_SHIFT, -1, ai << PAGE_SHIFT, (pi - ai) << PAGE_SHIFT, wi << PAGE_SHIFT)
            for m, pi, ai, wi in acc.values()]


# popcount of every byte value: counting set bits of packed rows without
# unpacking them (np.bitwise_count, much faster, needs numpy 2)
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_bitcount = getattr(np, "bitwise_count", None) or (lambda a: POPCOUNT[a])


def packed_prefix_counts(packed: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Set bits among the first ``idx`` bits of a packed row (bit order
    little), for many ``idx`` at once: per-byte popcounts summed between
    the boundary bytes only (a full cumsum would cost 20x more)."""
    padded = np.concatenate((packed, np.zeros(1, np.uint8)))    # idx may be the row's end
    pc = _bitcount(padded)
    q, r = idx // 8, idx % 8
    qs = np.unique(np.concatenate(([0], q)))
    seg = np.add.reduceat(pc, qs, dtype=np.int64)
    before = np.concatenate(([0], np.cumsum(seg)[:-1]))
    whole = before[np.searchsorted(qs, q)]
    part = POPCOUNT[padded[q] & ((1 << r) - 1).astype(np.uint8)]
    return whole + part


def span_counts_packed(packed: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """Set bits of a packed row inside each span."""
    offs = np.fromiter((s.offset for s in spans), dtype=np.int64, count=len(spans))
    ends = offs + np.fromiter((s.npages for s in spans), dtype=np.int64, count=len(spans))
    both = packed_prefix_counts(packed, np.concatenate((offs, ends)))
    return both[len(spans):] - both[:len(spans)]


def mapping_usage_packed(spans: Sequence[Span], present: np.ndarray, accessed: np.ndarray,
                         swapped: np.ndarray) -> list[MappingUsage]:
    """:func:`mapping_usage` from packed rows (little bit order)."""
    if not spans:
        return []
    p = span_counts_packed(present, spans).tolist()
    a = span_counts_packed(accessed, spans).tolist()
    w = span_counts_packed(swapped, spans).tolist()
    return _merge(spans, p, a, w)
