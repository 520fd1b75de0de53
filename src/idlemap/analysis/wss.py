"""Working-set summaries over a series of windows: the live command's
(WssSample rows) and a record's (wss_report over a History: percentiles,
trend, by mapping, anon vs file)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..records import MappingUsage, WssSample, usage_key
from .hotness import History


@dataclass(frozen=True)
class WssSummary:
    samples: int
    ref_min_bytes: int
    ref_mean_bytes: float
    ref_max_bytes: int
    ref_p50_bytes: float
    ref_p95_bytes: float
    rss_last_bytes: int
    window_mean_s: float


def summarize(samples: list[WssSample]) -> WssSummary | None:
    if not samples:
        return None
    ref = np.array([s.accessed_bytes for s in samples], dtype=np.float64)
    return WssSummary(
        samples=len(samples),
        ref_min_bytes=int(ref.min()), ref_mean_bytes=float(ref.mean()), ref_max_bytes=int(ref.max()),
        ref_p50_bytes=float(np.percentile(ref, 50)), ref_p95_bytes=float(np.percentile(ref, 95)),
        rss_last_bytes=samples[-1].rss_bytes,
        window_mean_s=float(np.mean([s.window_s for s in samples])))


def top_mappings(usages: list[MappingUsage], n: int = 10, key: str = "rss_bytes") -> list[MappingUsage]:
    """The n mappings with the most ``key``; the rest folded into one row."""
    ordered = sorted(usages, key=lambda u: getattr(u, key), reverse=True)
    return ordered[:n]


def profile_windows(base_s: float, steps: int) -> list[float]:
    """Gregg's -P: window ends at base, 2*base, 4*base, ... (power of two)."""
    return [base_s * (1 << k) for k in range(steps)]


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
    direction: str                    # rising, falling, flat (|change| < 10 %), or unknown (too few rounds)


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
# Quarters of at least two rounds: with fewer, "last quarter vs first" is
# one window against another, and a steady workload reads rising or falling.
MIN_TREND_ROUNDS = 8


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
    if n < MIN_TREND_ROUNDS:
        direction = "unknown"
    else:
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
