"""Layouts: which virtual pages a flat per-page array covers, and moving
per-page values from one layout to another.

An :class:`~idlemap.records.IdleMap` stores its pages flat, span after span
in VA order.  Two rounds of a scan rarely have the same spans for ever (the
heap grows, a library is mapped), so anything that compares rounds -- the
record file's delta coding, the hotness history -- first puts both on the
same layout.  A layout here is an ``(k, 2)`` int64 array of ``[first_vpn,
end_vpn)`` rows, sorted and non-overlapping; the flat index of a page is its
offset inside its row plus the lengths of the rows before it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..kernel.maps import PAGE_SHIFT
from ..records import Span


def ranges_of(spans: Sequence[Span]) -> np.ndarray:
    """The layout of a span list: one [first_vpn, end_vpn) row per span."""
    out = np.empty((len(spans), 2), dtype=np.int64)
    for i, s in enumerate(spans):
        out[i, 0] = s.start >> PAGE_SHIFT
        out[i, 1] = s.end >> PAGE_SHIFT
    return out


def check_sorted(ranges: np.ndarray) -> bool:
    """True if rows are non-empty, sorted and do not overlap."""
    if ranges.size == 0:
        return True
    if np.any(ranges[:, 1] <= ranges[:, 0]):
        return False
    return bool(np.all(ranges[1:, 0] >= ranges[:-1, 1]))


def npages_of(ranges: np.ndarray) -> int:
    return int((ranges[:, 1] - ranges[:, 0]).sum()) if ranges.size else 0


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def project(values: np.ndarray, src: np.ndarray, dst: np.ndarray, fill=0) -> np.ndarray:
    """``values`` (one entry per page of layout ``src``) re-laid over ``dst``.

    Pages of ``dst`` that ``src`` does not cover get ``fill``.  A sweep over
    the two sorted range lists: one slice copy per overlap, never a per-page
    loop.
    """
    if same(src, dst):
        return values.copy()
    dlen = dst[:, 1] - dst[:, 0] if dst.size else np.empty(0, np.int64)
    slen = src[:, 1] - src[:, 0] if src.size else np.empty(0, np.int64)
    doff = np.concatenate(([0], np.cumsum(dlen)))
    soff = np.concatenate(([0], np.cumsum(slen)))
    out = np.full(int(doff[-1]), fill, dtype=values.dtype)
    s_lo, s_hi = src[:, 0].tolist() if src.size else [], src[:, 1].tolist() if src.size else []
    d_lo, d_hi = dst[:, 0].tolist() if dst.size else [], dst[:, 1].tolist() if dst.size else []
    i = j = 0
    while i < len(s_lo) and j < len(d_lo):
        lo = max(s_lo[i], d_lo[j])
        hi = min(s_hi[i], d_hi[j])
        if lo < hi:
            a = int(doff[j]) + lo - d_lo[j]
            b = int(soff[i]) + lo - s_lo[i]
            out[a:a + hi - lo] = values[b:b + hi - lo]
        if s_hi[i] <= d_hi[j]:
            i += 1
        else:
            j += 1
    return out


def union(layouts: Iterable[np.ndarray]) -> np.ndarray:
    """The pages covered by any of the layouts, as one sorted layout
    (touching rows merged)."""
    rows = [r for r in layouts if r.size]
    if not rows:
        return np.empty((0, 2), np.int64)
    allr = np.concatenate(rows)
    allr = allr[np.argsort(allr[:, 0], kind="stable")]
    # running maximum of ends: a row starts a new run if it begins past it
    ends = np.maximum.accumulate(allr[:, 1])
    new = np.concatenate(([True], allr[1:, 0] > ends[:-1]))
    starts = allr[new, 0]
    run_id = np.cumsum(new) - 1
    run_end = np.zeros(starts.size, np.int64)
    np.maximum.at(run_end, run_id, allr[:, 1])
    return np.stack([starts, run_end], axis=1)


def vpn_index(ranges: np.ndarray, vpns: np.ndarray) -> np.ndarray:
    """Flat index of each vpn in the layout, -1 where not covered."""
    if ranges.size == 0:
        return np.full(vpns.shape, -1, np.int64)
    off = np.concatenate(([0], np.cumsum(ranges[:, 1] - ranges[:, 0])))
    row = np.searchsorted(ranges[:, 0], vpns, side="right") - 1
    ok = (row >= 0)
    rowc = np.where(ok, row, 0)
    ok &= vpns < ranges[rowc, 1]
    return np.where(ok, off[rowc] + vpns - ranges[rowc, 0], -1)
