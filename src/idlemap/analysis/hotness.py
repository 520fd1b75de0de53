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
* :func:`histograms` -- pages by access count and by idle age.

Built on the same History: analysis/wss.py (:func:`wss_report`: WSS
percentiles, trend, by mapping, anon vs file), analysis/heatmap.py (VA x
time over resident ranges) and analysis/by_mapping.py (the same reports
by mapping, for records without a per-page map).

No per-page Python loops: one numpy pass per round at most.  Results are
plain dataclasses so that tests assert on data and renderers only draw.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInput, UsageError
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping
from ..records import FILE_KINDS, MappingUsage, PackedRound, Round, Span
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
            raise BadInput(f"{what} needs per-page rounds; this data has per-mapping totals only "
                           "(recorded with clear_refs) -- record with a per-page backend (kmod or "
                           "page_idle), e.g. in the test VM")

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
    if min_idle_rounds is not None and not 0 <= min_idle_rounds <= stats.rounds:
        raise UsageError(f"--min-idle must be between 0 and the number of rounds ({stats.rounds})")
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
