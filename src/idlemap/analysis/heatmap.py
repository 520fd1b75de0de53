"""The VA x time heatmap of a History (analysis/hotness.py): the accessed
share of resident pages by address (rows) and round (columns), over
resident ranges only, with the mappings that own each band of rows."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE
from .hotness import History, _unpack


# -- heatmap -----------------------------------------------------------------------
COLLAPSE_MIN_PAGES = 512       # never-resident runs of >= 2 MiB are collapsed out of the picture
MIN_SEGMENT_ROWS_FRAC = 0.025  # mappings thinner than this share of the rows are grouped for labels


@dataclass(frozen=True)
class HeatmapSegment:
    """Rows [row_lo, row_hi) belong to one mapping (or to a group of small
    ones); fractional, because a row can hold the end of one mapping and
    the start of the next."""
    label: str
    kind: str
    row_lo: float
    row_hi: float
    va_start: int
    va_end: int
    shown_bytes: int              # resident-at-some-point bytes drawn in these rows
    mappings: int = 1


@dataclass
class HeatmapData:
    """Accessed fraction per (VA bin, time bin).

    Rows are equal slices of the pages that were resident in at least one
    round, in VA order, with never-resident runs of COLLAPSE_MIN_PAGES or
    more (and everything unmapped) left out.  ``values[row, col]`` is the
    accessed share of the row's resident pages over the column's rounds;
    NaN where none of its pages was resident.
    """
    values: np.ndarray            # (rows, cols) float64
    accessed_pages: np.ndarray    # (rows, cols) int64, summed over the column's rounds
    present_pages: np.ndarray     # (rows, cols) int64
    row_va_start: np.ndarray      # VA of each row's first page
    row_va_end: np.ndarray        # VA past each row's last page
    pages_per_row: float
    col_rounds: list[tuple[int, int]]   # (first, last) global round index of each column
    col_time_s: np.ndarray        # seconds since the first window began, at each column's end
    segments: list[HeatmapSegment]
    collapsed: list[tuple[int, int]]    # never-resident VA runs left out
    shown_bytes: int
    pid: int = 0
    collapsed_rows: list[float] = field(default_factory=list)   # where each collapsed run was cut out
    granularity: str = "page"     # "page", "region" (DAMON) or "mapping" (one row per mapping)
    omitted_mappings: int = 0     # mapping granularity: smaller mappings left out to fit the rows

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def cols(self) -> int:
        return int(self.values.shape[1])


def _group_segments(segs: list[HeatmapSegment], min_rows: float) -> list[HeatmapSegment]:
    """Merge runs of thin neighbouring segments so labels do not collide."""
    out: list[HeatmapSegment] = []
    group: list[HeatmapSegment] = []

    def flush():
        if not group:
            return
        if len(group) == 1:
            out.append(group[0])
        else:
            big = max(group, key=lambda s: s.shown_bytes)
            out.append(HeatmapSegment(f"{big.label} +{sum(g.mappings for g in group) - 1} more", "group",
                                      group[0].row_lo, group[-1].row_hi, group[0].va_start,
                                      group[-1].va_end, sum(g.shown_bytes for g in group),
                                      sum(g.mappings for g in group)))
        group.clear()

    for s in segs:
        if s.row_hi - s.row_lo >= min_rows:
            flush()
            out.append(s)
            continue
        group.append(s)
        if group[-1].row_hi - group[0].row_lo >= min_rows:
            flush()
    flush()
    return out


def heatmap(h: History, rows: int = 200, cols: int | None = None,
            collapse_min_pages: int = COLLAPSE_MIN_PAGES) -> HeatmapData:
    h.require_per_page("a heatmap")
    R, n = h.nrounds, h.npages
    cols = R if cols is None else max(1, min(cols, R))
    ever = _unpack(np.bitwise_or.reduce(h.present, axis=0), n) if R else np.zeros(n, bool)
    # never-resident runs long enough to matter are dropped
    never = ~ever
    d = np.diff(np.concatenate(([0], never.view(np.int8), [0])))
    rs, re_ = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    long = (re_ - rs) >= collapse_min_pages
    keep = np.ones(n, bool)
    for a, b in zip(rs[long].tolist(), re_[long].tolist()):
        keep[a:b] = False
    kept = np.flatnonzero(keep)
    K = int(kept.size)
    col_groups = np.array_split(np.arange(R), cols)
    col_rounds = [(h.first_round + int(g[0]), h.first_round + int(g[-1])) for g in col_groups]
    t0 = h.rounds[0].time_s - h.rounds[0].window_s
    col_time = np.array([h.rounds[int(g[-1])].time_s - t0 for g in col_groups])
    collapsed = []
    for a, b in zip(rs[long].tolist(), re_[long].tolist()):
        va = h.vpns(np.array([a, b - 1])) << PAGE_SHIFT
        collapsed.append((int(va[0]), int(va[1]) + PAGE_SIZE))
    if K == 0:
        z = np.zeros((0, cols))
        return HeatmapData(z, z.astype(np.int64), z.astype(np.int64), np.empty(0, np.int64),
                           np.empty(0, np.int64), 0.0, col_rounds, col_time, [], collapsed, 0, h.pid)
    rows = max(1, min(rows, K))
    edges = (np.arange(rows + 1, dtype=np.int64) * K) // rows
    starts = kept[edges[:-1]]
    col_of = np.empty(R, np.int64)
    for c, g in enumerate(col_groups):
        col_of[g] = c
    acc = np.zeros((rows, cols), np.int64)
    pres = np.zeros((rows, cols), np.int64)
    # Each row sums pages from its first kept page to the next row's first:
    # dropped pages in between were never resident, so they add nothing.
    for r in range(R):
        acc[:, col_of[r]] += np.add.reduceat(h.accessed_row(r), starts, dtype=np.int64)
        pres[:, col_of[r]] += np.add.reduceat(h.present_row(r), starts, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(pres > 0, acc / np.maximum(pres, 1), np.nan)
    last_page = kept[edges[1:] - 1]
    row_va_start = h.vpns(starts) << PAGE_SHIFT
    row_va_end = (h.vpns(last_page) + 1) << PAGE_SHIFT
    # segments: where each mapping's kept pages fall in rows
    ckeep = np.concatenate(([0], np.cumsum(keep)))
    segs: list[HeatmapSegment] = []
    for s in h.spans:
        c0, c1 = int(ckeep[s.offset]), int(ckeep[s.offset + s.npages])
        if c1 <= c0:
            continue
        r0, r1 = c0 * rows / K, c1 * rows / K
        if segs and segs[-1].label == s.mapping.label and segs[-1].va_end == s.start:
            p = segs.pop()
            segs.append(HeatmapSegment(p.label, p.kind, p.row_lo, r1, p.va_start, s.end,
                                       p.shown_bytes + ((c1 - c0) << PAGE_SHIFT)))
        else:
            segs.append(HeatmapSegment(s.mapping.label, s.mapping.kind, r0, r1, s.start, s.end,
                                       (c1 - c0) << PAGE_SHIFT))
    segs = _group_segments(segs, max(1.0, rows * MIN_SEGMENT_ROWS_FRAC))
    cut_rows = [float(ckeep[a]) * rows / K for a in rs[long].tolist()]
    return HeatmapData(values, acc, pres, row_va_start, row_va_end, K / rows, col_rounds, col_time,
                       segs, collapsed, K << PAGE_SHIFT, h.pid, cut_rows)


def column_change(data: HeatmapData) -> np.ndarray:
    """Mean absolute change of each column from the one before it (NaN rows
    ignored): where the picture changes, e.g. at a workload's phase change."""
    v = np.nan_to_num(data.values, nan=0.0)
    if v.shape[1] < 2:
        return np.zeros(0)
    return np.abs(np.diff(v, axis=1)).mean(axis=0)
