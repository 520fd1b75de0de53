"""Pure region arithmetic for DAMON results: batches, unions, per-page coverage.

DAMON reports regions ([start, end), nr_accesses, age) once per aggregation
interval.  These functions turn a stream of such reports into what the
rest of idlemap speaks: which virtual pages of which mapping were seen
accessed in a window.  No I/O here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..kernel.maps import PAGE_SHIFT
from ..records import Span


def batch_starts(target: np.ndarray, start: np.ndarray, time_s: np.ndarray,
                 gap_s: float = np.inf) -> np.ndarray:
    """Indices where a new aggregation begins in an event stream.

    kdamond emits each aggregation's regions target by target, each target's
    in ascending address order (mm/damon/core.c kdamond_reset_aggregated),
    so a new aggregation starts wherever (target, start) does not increase,
    or after a pause longer than ``gap_s``.
    """
    n = target.size
    if n == 0:
        return np.empty(0, np.int64)
    t0, t1 = target[:-1], target[1:]
    s0, s1 = start[:-1], start[1:]
    new = (t1 < t0) | ((t1 == t0) & (s1 <= s0)) | ((time_s[1:] - time_s[:-1]) > gap_s)
    return np.concatenate([[0], np.nonzero(new)[0] + 1]).astype(np.int64)


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of half-open intervals, as sorted disjoint (starts, ends)."""
    if starts.size == 0:
        return starts.astype(np.uint64), ends.astype(np.uint64)
    order = np.argsort(starts, kind="stable")
    s = starts[order].astype(np.uint64)
    e = ends[order].astype(np.uint64)
    run_end = np.maximum.accumulate(e)
    # A new run starts where an interval begins after everything before it ended.
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > run_end[:-1]
    idx = np.nonzero(new)[0]
    last = np.concatenate([idx[1:] - 1, [s.size - 1]])
    return s[idx], run_end[last]


def covered_pages(spans: Sequence[Span], npages: int, starts: np.ndarray,
                  ends: np.ndarray) -> np.ndarray:
    """Per-page bool over the flat page arrays of ``spans``: True where a page
    overlaps one of the disjoint, sorted intervals [starts, ends)."""
    out = np.zeros(npages, dtype=bool)
    if starts.size == 0:
        return out
    sp = (starts >> np.uint64(PAGE_SHIFT)).astype(np.int64)                  # first page
    ep = ((ends + np.uint64((1 << PAGE_SHIFT) - 1)) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
    for s in spans:
        lo, hi = s.first_vpn, s.first_vpn + s.npages
        i = int(np.searchsorted(ep, lo, side="right"))
        j = int(np.searchsorted(sp, hi, side="left"))
        if i >= j:
            continue
        a = np.clip(sp[i:j], lo, hi) - lo + s.offset
        b = np.clip(ep[i:j], lo, hi) - lo + s.offset
        diff = np.zeros(s.npages + 1, dtype=np.int32)
        np.add.at(diff, a - s.offset, 1)
        np.add.at(diff, b - s.offset, -1)
        out[s.offset:s.offset + s.npages] = np.cumsum(diff[:-1]) > 0
    return out


def bytes_within(spans: Sequence[Span], starts: np.ndarray, ends: np.ndarray) -> int:
    """Bytes of the disjoint sorted intervals that fall inside the spans."""
    total = 0
    if starts.size == 0:
        return 0
    for s in spans:
        i = int(np.searchsorted(ends, np.uint64(s.start), side="right"))
        j = int(np.searchsorted(starts, np.uint64(s.end), side="left"))
        if i >= j:
            continue
        lo = np.maximum(starts[i:j], np.uint64(s.start))
        hi = np.minimum(ends[i:j], np.uint64(s.end))
        total += int(np.sum(hi - lo))
    return total
