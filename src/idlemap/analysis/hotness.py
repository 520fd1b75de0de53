"""Hotness over time: pure functions over a series of scan rounds.

Input: :class:`~idlemap.records.Round` objects, from a live scanner or a
record file (the same objects either way).  :func:`build_history` puts
every round's per-page bits on one common layout (the union of all the
rounds' spans, labelled by mapping) as packed bit rows; everything else is
arithmetic on those rows:

* :func:`page_stats` -- per page: access count 0..N (memory-optimizer's
  ``task-refs`` reference count), first/last round seen accessed, idle age
  (rounds since the last access), rounds present;
* :func:`hot_ranges` / :func:`cold_ranges` -- coalesced VA ranges by threshold;
* :func:`histograms` -- pages by access count and by idle age;
* :func:`wss_report` -- WSS percentiles, trend, by mapping, anon vs file;
* :func:`heatmap` -- VA x time matrix over resident ranges only.

No per-page Python loops: one numpy pass per round at most.  Results are
plain dataclasses so that tests assert on data and renderers only draw.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping
from ..records import FILE_KINDS, MappingUsage, PackedRound, Round, Span, usage_key
from .layout import npages_of, project, ranges_of, same, union
from .usage import mapping_usage_packed


def _unpack(row: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(row, count=n, bitorder="little").view(bool)


def _pack(a: np.ndarray) -> np.ndarray:
    return np.packbits(a, bitorder="little")


# -- the history ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RoundInfo:
    """The scalars of one round (what a WSS report needs)."""
    index: int
    time_s: float
    wall_time_s: float
    window_s: float
    rss_bytes: int
    pss_bytes: int
    accessed_bytes: int
    anon_accessed_bytes: int
    file_accessed_bytes: int
    by_mapping: list[MappingUsage]

    @classmethod
    def of(cls, r: Round) -> "RoundInfo":
        s = r.sample
        return cls(r.index, s.time_s, r.wall_time_s, s.window_s, s.rss_bytes, s.pss_bytes,
                   s.accessed_bytes, r.anon_accessed_bytes, r.file_accessed_bytes, list(s.by_mapping))


@dataclass
class History:
    """Rounds on one layout.

    ``accessed`` and ``present`` are ``(rounds, ceil(npages/8))`` uint8
    arrays, one packed bit row per round (bit order little: page i is bit
    i%8 of byte i//8, the RFC's order) over the flat pages of ``spans``;
    None for a mapping-granular history (clear_refs records).
    """
    pid: int
    granularity: str
    rounds: list[RoundInfo]
    spans: list[Span]
    npages: int
    accessed: np.ndarray | None
    present: np.ndarray | None
    first_round: int = 0          # global index of rounds[0] (after window())

    @property
    def nrounds(self) -> int:
        return len(self.rounds)

    @property
    def per_page(self) -> bool:
        return self.accessed is not None

    def require_per_page(self, what: str) -> None:
        if not self.per_page:
            raise UsageError(f"{what} needs per-page rounds; this data has per-mapping totals only "
                             "(recorded with clear_refs) -- record with the page_idle backend, "
                             "e.g. in the test VM")

    def accessed_row(self, r: int) -> np.ndarray:
        return _unpack(self.accessed[r], self.npages)

    def present_row(self, r: int) -> np.ndarray:
        return _unpack(self.present[r], self.npages)

    def window(self, start: int | None, stop: int | None) -> "History":
        """Rounds [start, stop) only (indices into this history)."""
        sl = slice(start, stop)
        idx = range(self.nrounds)[sl]
        if len(idx) == 0:
            raise UsageError(f"no rounds in {start if start is not None else ''}:"
                             f"{stop if stop is not None else ''} (the data has {self.nrounds})")
        return History(self.pid, self.granularity, self.rounds[sl], self.spans, self.npages,
                       None if self.accessed is None else self.accessed[sl],
                       None if self.present is None else self.present[sl],
                       self.first_round + idx.start)

    def vpns(self, idx: np.ndarray) -> np.ndarray:
        """Virtual page number of flat page indices."""
        offs = np.array([s.offset for s in self.spans], dtype=np.int64)
        first = np.array([s.first_vpn for s in self.spans], dtype=np.int64)
        k = np.searchsorted(offs, idx, side="right") - 1
        return first[k] + idx - offs[k]

    def restrict(self, va_ranges: Sequence[tuple[int, int]]) -> "History":
        """Only the pages inside the VA ranges (per-page histories)."""
        self.require_per_page("--range")
        cut: list[Span] = []
        off = 0
        for s in self.spans:
            for lo, hi in sorted(va_ranges):
                a = max(s.start, lo & ~(PAGE_SIZE - 1))
                b = min(s.end, (hi + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
                if a < b:
                    cut.append(Span(s.mapping, a, b, off))
                    off += (b - a) >> PAGE_SHIFT
        if not cut:
            raise UsageError("no recorded page lies inside the given --range")
        src, dst = ranges_of(self.spans), ranges_of(cut)
        acc = np.stack([_pack(project(self.accessed_row(r), src, dst, False)) for r in range(self.nrounds)])
        pres = np.stack([_pack(project(self.present_row(r), src, dst, False)) for r in range(self.nrounds)])
        return History(self.pid, self.granularity, self.rounds, cut, off, acc, pres, self.first_round)


def _universe(layouts: list[list[Span]]) -> list[Span]:
    """The union of several span lists, split where the mapping changes;
    where layouts disagree about a page's mapping the newest one wins."""
    ranges = [ranges_of(sp) for sp in layouts]
    cover = union(ranges)
    if cover.size == 0:
        return []
    bps = np.unique(np.concatenate([r.ravel() for r in ranges if r.size]))
    lo, hi = bps[:-1], bps[1:]
    owner_l = np.full(lo.size, -1, np.int64)
    owner_s = np.full(lo.size, -1, np.int64)
    for li in range(len(layouts) - 1, -1, -1):
        r = ranges[li]
        if r.size == 0:
            continue
        k = np.searchsorted(r[:, 0], lo, side="right") - 1
        kc = np.maximum(k, 0)
        hit = (k >= 0) & (r[kc, 1] > lo) & (owner_l < 0)
        owner_l[hit] = li
        owner_s[hit] = kc[hit]
    out: list[Span] = []
    off = 0
    for a, b, li, si in zip(lo.tolist(), hi.tolist(), owner_l.tolist(), owner_s.tolist()):
        if li < 0:
            continue
        m = layouts[li][si].mapping
        if out and out[-1].mapping == m and out[-1].end >> PAGE_SHIFT == a:
            prev = out.pop()
            out.append(Span(m, prev.start, b << PAGE_SHIFT, prev.offset))
        else:
            out.append(Span(m, a << PAGE_SHIFT, b << PAGE_SHIFT, off))
        off += b - a
    return out


def _packed_info(p) -> RoundInfo:
    by = mapping_usage_packed(p.spans, p.present, p.accessed, p.swapped)
    anon = sum(u.accessed_bytes for u in by if u.mapping.kind not in FILE_KINDS)
    file = sum(u.accessed_bytes for u in by if u.mapping.kind in FILE_KINDS)
    return RoundInfo(p.index, p.time_s, p.wall_time_s, p.window_s, sum(u.rss_bytes for u in by),
                     p.pss_bytes, sum(u.accessed_bytes for u in by), anon, file, by)


def build_history(rounds: Iterable, pid: int | None = None) -> History:
    """Collect rounds into a :class:`History`: :class:`~idlemap.records.Round`
    objects (live, or ``Record.rounds()``) or, faster for records,
    ``Record.packed_rounds()`` (bits stay packed)."""
    infos: list[RoundInfo] = []
    layouts: list[list[Span]] = []
    layout_ids: dict[tuple, int] = {}
    rows: list[tuple[int, np.ndarray, np.ndarray]] = []
    gran = "page"
    for r in rounds:
        if isinstance(r, PackedRound):
            infos.append(_packed_info(r))
            sp, acc_row, pres_row = r.spans, r.accessed, r.present
        else:
            infos.append(RoundInfo.of(r))
            pid = r.sample.pid if pid is None else pid
            m = r.idle_map
            if m is None:
                gran = "mapping"
                continue
            sp, acc_row, pres_row = m.spans, _pack(m.present & ~m.idle), _pack(m.present)
        key = tuple((s.mapping, s.start, s.end) for s in sp)
        lid = layout_ids.get(key)
        if lid is None:
            lid = layout_ids[key] = len(layouts)
            layouts.append(list(sp))
        rows.append((lid, acc_row, pres_row))
    if gran == "mapping" or not infos:
        return History(pid or 0, "mapping" if infos else "page", infos, [], 0, None, None)
    spans = _universe(layouts)
    uni = ranges_of(spans)
    n = npages_of(uni)
    nb = (n + 7) // 8
    acc = np.zeros((len(rows), nb), np.uint8)
    pres = np.zeros((len(rows), nb), np.uint8)
    lranges = [ranges_of(sp) for sp in layouts]
    for i, (lid, a, p) in enumerate(rows):
        src = lranges[lid]
        if same(src, uni):
            acc[i], pres[i] = a, p
        else:
            k = npages_of(src)
            acc[i] = _pack(project(_unpack(a, k), src, uni, False))
            pres[i] = _pack(project(_unpack(p, k), src, uni, False))
    return History(pid or 0, "page", infos, spans, n, acc, pres)


# -- per-page statistics -----------------------------------------------------
@dataclass
class PageStats:
    """Per page of a history's layout (flat arrays)."""
    rounds: int
    count: np.ndarray           # uint16: rounds in which the page was accessed (0..rounds)
    first: np.ndarray           # int32: first round accessed (-1: never)
    last: np.ndarray            # int32: last round accessed (-1: never)
    present_rounds: np.ndarray  # uint16: rounds in which the page was resident
    present_last: np.ndarray    # bool: resident in the last round

    @property
    def idle_age(self) -> np.ndarray:
        """Rounds since the last access, as of the last round (0: accessed in
        the last round); -1 for pages never accessed."""
        return np.where(self.last >= 0, self.rounds - 1 - self.last, -1).astype(np.int32)

    @property
    def present_any(self) -> np.ndarray:
        return self.present_rounds > 0


def page_stats(h: History) -> PageStats:
    h.require_per_page("per-page statistics")
    n, R = h.npages, h.nrounds
    count = np.zeros(n, np.uint16)
    first = np.full(n, -1, np.int32)
    last = np.full(n, -1, np.int32)
    pres = np.zeros(n, np.uint16)
    seen = np.zeros(n, bool)
    for r in range(R):
        a = h.accessed_row(r)
        count += a
        # copyto(where=) instead of last[a] = r: no index array, and it
        # costs the same for a dense mask as for a sparse one
        np.copyto(last, r, where=a)
        np.copyto(first, r, where=a & ~seen)
        seen |= a
        pres += h.present_row(r)
    return PageStats(R, count, first, last, pres, h.present_row(R - 1) if R else np.zeros(n, bool))


# -- coalesced ranges ----------------------------------------------------------
@dataclass
class RangeTable:
    """Coalesced VA ranges (struct of arrays; a range never crosses mappings)."""
    start: np.ndarray           # int64 VA
    end: np.ndarray             # int64 VA (exclusive)
    pages: np.ndarray           # pages inside that matched the threshold
    count_min: np.ndarray
    count_max: np.ndarray
    count_mean: np.ndarray
    mappings: list[Mapping]     # one per range
    threshold: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.start.size)

    @property
    def size_bytes(self) -> np.ndarray:
        return self.end - self.start

    @property
    def total_pages(self) -> int:
        return int(self.pages.sum())

    def rows(self, limit: int | None = None, order: str = "va") -> list[dict]:
        idx = np.arange(len(self))
        if order == "size":
            idx = np.argsort(-(self.end - self.start), kind="stable")
        if limit:
            idx = idx[:limit]
        return [{"start": int(self.start[i]), "end": int(self.end[i]),
                 "size_bytes": int(self.end[i] - self.start[i]), "pages": int(self.pages[i]),
                 "count_min": int(self.count_min[i]), "count_max": int(self.count_max[i]),
                 "count_mean": round(float(self.count_mean[i]), 3),
                 "mapping": self.mappings[i].label, "kind": self.mappings[i].kind} for i in idx]


def coalesce(h: History, mask: np.ndarray, stats: PageStats, merge_gap_pages: int = 0) -> RangeTable:
    """Runs of ``mask`` pages as VA ranges, split at mapping boundaries;
    runs of one mapping separated by at most ``merge_gap_pages`` are joined."""
    n = h.npages
    offs = np.array([s.offset for s in h.spans], dtype=np.int64)
    sstart = np.zeros(n + 1, bool)
    sstart[offs] = True
    m = mask.astype(bool)
    prev = np.concatenate(([False], m[:-1]))
    nxt = np.concatenate((m[1:], [False]))
    starts = np.flatnonzero(m & (~prev | sstart[:n]))
    ends = np.flatnonzero(m & (~nxt | sstart[1:])) + 1
    span_of = np.searchsorted(offs, starts, side="right") - 1
    if merge_gap_pages > 0 and starts.size > 1:
        join = (starts[1:] - ends[:-1] <= merge_gap_pages) & (span_of[1:] == span_of[:-1])
        keep = np.concatenate(([True], ~join))
        ends = np.concatenate((ends[:-1][~join], ends[-1:]))
        starts, span_of = starts[keep], span_of[keep]
    cnt = stats.count.astype(np.int64)
    mm = m.astype(np.int64)
    csum = np.concatenate(([0], np.cumsum(cnt * mm)))
    psum = np.concatenate(([0], np.cumsum(mm)))
    pages = psum[ends] - psum[starts]
    mean = np.divide(csum[ends] - csum[starts], pages, out=np.zeros(starts.size), where=pages > 0)
    if starts.size:
        big = np.iinfo(np.int64).max
        cmin = np.minimum.reduceat(np.where(m, cnt, big), starts)
        # reduceat runs each segment up to the next start; the pages past a
        # run's end are outside the mask, so the fill values ignore them
        cmax = np.maximum.reduceat(np.where(m, cnt, -1), starts)
    else:
        cmin = cmax = np.empty(0, np.int64)
    first_vpn = np.array([s.first_vpn for s in h.spans], dtype=np.int64)
    va_lo = (first_vpn[span_of] + starts - offs[span_of]) << PAGE_SHIFT
    va_hi = (first_vpn[span_of] + ends - offs[span_of]) << PAGE_SHIFT
    return RangeTable(va_lo, va_hi, pages, cmin, cmax, mean, [h.spans[k].mapping for k in span_of.tolist()])


def hot_ranges(h: History, stats: PageStats, min_count: int | None = None,
               merge_gap_pages: int = 0) -> RangeTable:
    """Pages accessed in at least ``min_count`` rounds (default: every round,
    memory-optimizer's "hot")."""
    k = stats.rounds if min_count is None else min_count
    if not 1 <= k <= stats.rounds:
        raise UsageError(f"--min-count must be between 1 and the number of rounds ({stats.rounds})")
    t = coalesce(h, stats.count >= k, stats, merge_gap_pages)
    t.threshold = {"min_count": k, "rounds": stats.rounds}
    return t


def cold_ranges(h: History, stats: PageStats, max_count: int = 0, min_idle_rounds: int | None = None,
                merge_gap_pages: int = 0) -> RangeTable:
    """Pages resident in the last round and accessed in at most
    ``max_count`` rounds (default 0: never), optionally also idle for at
    least ``min_idle_rounds`` rounds -- the candidates to reclaim or demote."""
    if not 0 <= max_count <= stats.rounds:
        raise UsageError(f"--max-count must be between 0 and the number of rounds ({stats.rounds})")
    mask = stats.present_last & (stats.count <= max_count)
    if min_idle_rounds is not None:
        age = stats.idle_age
        mask &= (age < 0) | (age >= min_idle_rounds)
    t = coalesce(h, mask, stats, merge_gap_pages)
    t.threshold = {"max_count": max_count, "min_idle_rounds": min_idle_rounds, "rounds": stats.rounds}
    return t


# -- histograms -----------------------------------------------------------------
@dataclass
class Histograms:
    """Pages resident in at least one round, by access count and idle age."""
    rounds: int
    population_pages: int
    by_count: np.ndarray        # [c] = pages accessed in exactly c rounds, c = 0..rounds
    by_idle_age: np.ndarray     # [a] = pages last accessed a rounds before the last, a = 0..rounds-1
    never_accessed: int         # pages never accessed (no idle age)
    page_size: int = PAGE_SIZE


def histograms(stats: PageStats, mask: np.ndarray | None = None) -> Histograms:
    pop = stats.present_any if mask is None else (stats.present_any & mask)
    R = stats.rounds
    by_count = np.bincount(stats.count[pop], minlength=R + 1)[:R + 1]
    age = stats.idle_age[pop]
    by_age = np.bincount(age[age >= 0], minlength=max(R, 1))[:max(R, 1)]
    return Histograms(R, int(pop.sum()), by_count, by_age, int((age < 0).sum()))


# -- WSS over time ----------------------------------------------------------------
PCTS = (50, 90, 95, 99)


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    min: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Percentiles":
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return cls(0, 0, 0, 0, 0, 0, 0)
        p = np.percentile(v, PCTS)
        return cls(*(float(x) for x in p), float(v.max()), float(v.min()), float(v.mean()))

    def as_dict(self, suffix: str = "_bytes") -> dict:
        return {f"{k}{suffix}": round(getattr(self, k)) for k in ("p50", "p90", "p95", "p99", "max", "min", "mean")}


@dataclass(frozen=True)
class Trend:
    """How the WSS moves over the recording."""
    slope_bytes_per_s: float          # least-squares line through (time, WSS)
    first_quarter_mean_bytes: float
    last_quarter_mean_bytes: float
    change_pct: float                 # last quarter vs first quarter
    direction: str                    # rising, falling or flat (|change| < 10 %)


@dataclass(frozen=True)
class MappingWss:
    label: str
    kind: str
    start: int
    rss_last_bytes: int
    accessed: Percentiles


@dataclass(frozen=True)
class WssReport:
    rounds: int
    interval_mean_s: float
    duration_s: float
    wss: Percentiles
    anon: Percentiles
    file: Percentiles
    rss: Percentiles
    trend: Trend
    series_time_s: list[float]        # end of each window, seconds since the first window began
    series_bytes: list[int]
    by_mapping: list[MappingWss]
    series_rss_bytes: list[int] = field(default_factory=list)   # RSS at the end of each window


TREND_FLAT_PCT = 10.0


def trend_of(t: np.ndarray, y: np.ndarray) -> Trend:
    n = y.size
    slope = 0.0
    if n >= 2:
        # least squares on centred data (closed form; no ill-conditioned polyfit)
        with np.errstate(all="ignore"):
            tc = t - t.mean()
            den = float((tc * tc).sum())
            if den > 0:
                slope = float((tc * (y - y.mean())).sum()) / den
        if not np.isfinite(slope):
            slope = 0.0
    q = max(1, n // 4)
    a, b = float(y[:q].mean()) if n else 0.0, float(y[-q:].mean()) if n else 0.0
    change = 100.0 * (b - a) / a if a > 0 else (0.0 if b == 0 else 100.0)
    direction = "flat" if abs(change) < TREND_FLAT_PCT else ("rising" if change > 0 else "falling")
    return Trend(slope, a, b, change, direction)


def wss_report(h: History) -> WssReport:
    rs = h.rounds
    if not rs:
        raise UsageError("no rounds to report on")
    t0 = rs[0].time_s - rs[0].window_s
    t = np.array([r.time_s - t0 for r in rs])
    y = np.array([r.accessed_bytes for r in rs], dtype=np.float64)
    per: dict[tuple[int, str], list] = {}
    for i, r in enumerate(rs):
        for u in r.by_mapping:
            e = per.setdefault(usage_key(u), [u.mapping, np.zeros(len(rs)), 0])
            e[0] = u.mapping
            e[1][i] += u.accessed_bytes
            e[2] = u.rss_bytes if i == len(rs) - 1 else e[2]
    by_map = [MappingWss(m.label, m.kind, m.start, rss, Percentiles.of(v)) for m, v, rss in per.values()]
    by_map.sort(key=lambda x: (-x.accessed.p95, -x.rss_last_bytes, x.start))
    return WssReport(
        rounds=len(rs), interval_mean_s=float(np.mean([r.window_s for r in rs])),
        duration_s=float(t[-1]) if t.size else 0.0, wss=Percentiles.of(y),
        anon=Percentiles.of([r.anon_accessed_bytes for r in rs]),
        file=Percentiles.of([r.file_accessed_bytes for r in rs]),
        rss=Percentiles.of([r.rss_bytes for r in rs]), trend=trend_of(t, y),
        series_time_s=[round(float(x), 6) for x in t], series_bytes=[int(v) for v in y], by_mapping=by_map,
        series_rss_bytes=[int(r.rss_bytes) for r in rs])


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


# -- mapping granularity (clear_refs records) ---------------------------------------
# A clear_refs round has exact per-mapping totals and no per-page map, so the
# page reports degrade to the mapping as their unit instead of refusing: a
# mapping x time heatmap, hot/cold mappings, histograms of mappings.
@dataclass
class MappingSeries:
    """Per mapping (VA order), per round: resident and accessed bytes."""
    mappings: list[Mapping]
    rss: np.ndarray               # (mappings, rounds) int64 bytes
    accessed: np.ndarray          # (mappings, rounds) int64 bytes
    first_round: int = 0

    @property
    def nrounds(self) -> int:
        return int(self.rss.shape[1])

    @property
    def rounds_accessed(self) -> np.ndarray:
        return (self.accessed > 0).sum(axis=1)

    @property
    def idle_age(self) -> np.ndarray:
        """Rounds since the mapping was last accessed, at the last round (-1: never)."""
        R = self.nrounds
        acc = self.accessed > 0
        last = np.where(acc.any(axis=1), R - 1 - np.argmax(acc[:, ::-1], axis=1), -1)
        return np.where(last >= 0, R - 1 - last, -1)


def mapping_series(h: History) -> MappingSeries:
    """The per-mapping totals of every round, a mapping followed across
    rounds by its start and label (as the wss report does)."""
    R = h.nrounds
    index: dict[tuple[int, str], int] = {}
    maps: list[Mapping] = []
    cells: list[tuple[int, int, int, int]] = []
    for i, r in enumerate(h.rounds):
        for u in r.by_mapping:
            k = usage_key(u)
            j = index.get(k)
            if j is None:
                j = index[k] = len(maps)
                maps.append(u.mapping)
            else:
                maps[j] = u.mapping          # the newest extent (a heap grows)
            cells.append((j, i, u.rss_bytes, u.accessed_bytes))
    rss = np.zeros((len(maps), R), np.int64)
    acc = np.zeros((len(maps), R), np.int64)
    for j, i, a, b in cells:
        rss[j, i] += a
        acc[j, i] += b
    order = sorted(range(len(maps)), key=lambda j: (maps[j].start, maps[j].label))
    return MappingSeries([maps[j] for j in order], rss[order], np.minimum(acc, rss)[order]
                         if len(order) else acc, h.first_round)


def mapping_heatmap(h: History, rows: int = 200, cols: int | None = None) -> HeatmapData:
    """Mapping x time: one row per mapping (VA order; only the ``rows``
    biggest by resident size when there are more), a cell the accessed share
    of the mapping's resident bytes over the column's rounds."""
    ms = mapping_series(h)
    R = ms.nrounds
    cols = R if cols is None else max(1, min(cols, R))
    size = ms.rss.max(axis=1) if R else np.zeros(0, np.int64)
    live = np.flatnonzero(size > 0)
    omitted = 0
    if live.size > rows:
        keep = np.sort(live[np.argsort(-size[live], kind="stable")[:rows]])
        omitted = int(live.size - keep.size)
        live = keep
    col_groups = np.array_split(np.arange(R), cols)
    col_rounds = [(h.first_round + int(g[0]), h.first_round + int(g[-1])) for g in col_groups]
    t0 = h.rounds[0].time_s - h.rounds[0].window_s
    col_time = np.array([h.rounds[int(g[-1])].time_s - t0 for g in col_groups])
    acc = np.stack([ms.accessed[live][:, g].sum(axis=1) for g in col_groups], axis=1) if live.size \
        else np.zeros((0, cols), np.int64)
    pres = np.stack([ms.rss[live][:, g].sum(axis=1) for g in col_groups], axis=1) if live.size \
        else np.zeros((0, cols), np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(pres > 0, np.minimum(1.0, acc / np.maximum(pres, 1)), np.nan)
    segs = [HeatmapSegment(ms.mappings[j].label, ms.mappings[j].kind, float(i), float(i + 1),
                           ms.mappings[j].start, ms.mappings[j].end, int(size[j]))
            for i, j in enumerate(live.tolist())]
    shown = int(size[live].sum()) if live.size else 0
    return HeatmapData(values.astype(np.float64), acc >> PAGE_SHIFT, pres >> PAGE_SHIFT,
                       np.array([ms.mappings[j].start for j in live.tolist()], np.int64),
                       np.array([ms.mappings[j].end for j in live.tolist()], np.int64),
                       (shown / PAGE_SIZE / live.size) if live.size else 0.0, col_rounds, col_time, segs, [],
                       shown, h.pid, [], granularity="mapping", omitted_mappings=omitted)


def mapping_rows(ms: MappingSeries, idx: np.ndarray) -> list[dict]:
    """One dict per mapping: its extent and the round-by-round figures."""
    R = ms.nrounds
    cnt, age = ms.rounds_accessed, ms.idle_age
    out = []
    for j in idx.tolist():
        m, a = ms.mappings[j], ms.accessed[j]
        rss_last = int(ms.rss[j, -1]) if R else 0
        out.append({"start": int(m.start), "end": int(m.end), "mapping": m.label, "kind": m.kind,
                    "rss_last_bytes": rss_last,
                    "wss_p50_bytes": int(round(float(np.percentile(a, 50)))) if R else 0,
                    "wss_max_bytes": int(a.max()) if R else 0,
                    "wss_min_bytes": int(a.min()) if R else 0,
                    "cold_bytes": max(0, rss_last - (int(a.max()) if R else 0)),
                    "rounds_accessed": int(cnt[j]), "idle_rounds": int(age[j])})
    return out


def hot_mappings(h: History, min_count: int | None = None) -> tuple[list[dict], dict]:
    """Mappings accessed (any byte) in at least ``min_count`` rounds (default:
    every round), biggest accessed share first."""
    ms = mapping_series(h)
    R = ms.nrounds
    k = R if min_count is None else min_count
    if not 1 <= k <= max(R, 1):
        raise UsageError(f"--min-count must be between 1 and the number of rounds ({R})")
    idx = np.flatnonzero(ms.rounds_accessed >= k)
    rows = mapping_rows(ms, idx)
    rows.sort(key=lambda r: (-r["wss_p50_bytes"], -r["rss_last_bytes"], r["start"]))
    return rows, {"min_count": k, "rounds": R}


def cold_mappings(h: History, max_count: int | None = None, min_idle_rounds: int | None = None
                  ) -> tuple[list[dict], dict]:
    """Mappings resident in the last round with bytes not accessed in any
    one round: ``cold_bytes`` = resident now minus the most accessed in one
    round (the never-accessed bytes when the same pages are accessed each
    round, an upper bound otherwise), biggest first.  ``max_count`` and
    ``min_idle_rounds`` filter mappings by rounds accessed and idle age."""
    ms = mapping_series(h)
    R = ms.nrounds
    if max_count is not None and not 0 <= max_count <= R:
        raise UsageError(f"--max-count must be between 0 and the number of rounds ({R})")
    last = ms.rss[:, -1] if R else np.zeros(len(ms.mappings), np.int64)
    cold = last - (ms.accessed.max(axis=1) if R else 0)
    mask = (last > 0) & (cold > 0)
    if max_count is not None:
        mask &= ms.rounds_accessed <= max_count
    if min_idle_rounds is not None:
        age = ms.idle_age
        mask &= (age < 0) | (age >= min_idle_rounds)
    rows = mapping_rows(ms, np.flatnonzero(mask))
    rows.sort(key=lambda r: (-r["cold_bytes"], r["start"]))
    return rows, {"max_count": max_count, "min_idle_rounds": min_idle_rounds, "rounds": R}


def mapping_histograms(h: History) -> Histograms:
    """Histograms with the mapping as the unit: a mapping's resident bytes
    (its largest over the rounds) by the rounds in which it was accessed and
    by its idle age; counts are in pages of those bytes."""
    ms = mapping_series(h)
    R = ms.nrounds
    pages = (ms.rss.max(axis=1) if R else np.zeros(0, np.int64)) >> PAGE_SHIFT
    pop = pages > 0
    cnt, age = ms.rounds_accessed[pop], ms.idle_age[pop]
    w = pages[pop]
    by_count = np.bincount(cnt, weights=w, minlength=R + 1)[:R + 1].astype(np.int64)
    by_age = np.bincount(age[age >= 0], weights=w[age >= 0], minlength=max(R, 1))[:max(R, 1)].astype(np.int64)
    return Histograms(R, int(w.sum()), by_count, by_age, int(w[age < 0].sum()))
