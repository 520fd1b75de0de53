"""The page reports with the mapping as their unit, for rounds without a
per-page map (clear_refs records): a mapping x time heatmap, hot and cold
mappings, histograms of mappings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping
from ..records import usage_key
from .heatmap import HeatmapData, HeatmapSegment
from .hotness import Histograms, History


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
