"""Text (and the histogram PNG) for the hotness reports.

Each function takes an analysis result (analysis/hotness.py) and draws it;
JSON views are built here too so text and JSON come from the same data.
"""
from __future__ import annotations

import sys
from typing import IO

import numpy as np

from ..analysis.hotness import Histograms, RangeTable
from ..analysis.wss import MIN_TREND_ROUNDS, Percentiles, WssReport
from .heatmap import _save, load_matplotlib
from .text import Table
from .units import human_bytes

MiB = 1 << 20
SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values, width: int = 60) -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return ""
    if v.size > width:
        v = np.array([c.mean() for c in np.array_split(v, width)])
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return SPARK[3] * v.size
    idx = ((v - lo) / (hi - lo) * (len(SPARK) - 1) + 0.5).astype(int)
    return "".join(SPARK[i] for i in idx)


def _mb(x: float) -> str:
    return f"{x / MiB:.2f}"


# -- wss -------------------------------------------------------------------------
def wss_json(r: WssReport, top: int) -> dict:
    def pct(p: Percentiles) -> dict:
        return p.as_dict()
    return {"rounds": r.rounds, "interval_mean_s": round(r.interval_mean_s, 6),
            "duration_s": round(r.duration_s, 6), "wss": pct(r.wss), "anon": pct(r.anon),
            "file": pct(r.file), "rss": pct(r.rss),
            "trend": {"slope_bytes_per_s": round(r.trend.slope_bytes_per_s, 3),
                      "first_quarter_mean_bytes": round(r.trend.first_quarter_mean_bytes),
                      "last_quarter_mean_bytes": round(r.trend.last_quarter_mean_bytes),
                      "change_pct": round(r.trend.change_pct, 3), "direction": r.trend.direction},
            "series": [{"t_s": t, "wss_bytes": b, **({"rss_bytes": r.series_rss_bytes[i]} if r.series_rss_bytes else {})}
                       for i, (t, b) in enumerate(zip(r.series_time_s, r.series_bytes))],
            "by_mapping": [{"label": m.label, "kind": m.kind, "start": f"{m.start:#x}",
                            "rss_last_bytes": m.rss_last_bytes, **pct(m.accessed)}
                           for m in r.by_mapping[:top or None]]}


def print_wss(r: WssReport, top: int, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    out.write(f"{r.rounds} rounds of {r.interval_mean_s:.3f} s (mean window), {r.duration_s:.1f} s in all\n\n")
    t = Table([("", 6), ("p50(MiB)", 10), ("p90(MiB)", 10), ("p95(MiB)", 10), ("p99(MiB)", 10),
               ("max(MiB)", 10), ("min(MiB)", 10)], out)
    t.header()
    for name, p in (("WSS", r.wss), ("anon", r.anon), ("file", r.file), ("RSS", r.rss)):
        t.row([name, _mb(p.p50), _mb(p.p90), _mb(p.p95), _mb(p.p99), _mb(p.max), _mb(p.min)])
    tr = r.trend
    if tr.direction == "unknown":
        out.write(f"\ntrend: too few rounds to tell ({r.rounds}; {MIN_TREND_ROUNDS} or more give one)\n")
    else:
        out.write(f"\ntrend: {tr.direction} ({tr.change_pct:+.1f}% last quarter vs first; "
                  f"slope {tr.slope_bytes_per_s / MiB:+.3f} MiB/s)\n")
    out.write(f"WSS over time  [{sparkline(r.series_bytes)}]  "
              f"{human_bytes(r.wss.min)} .. {human_bytes(r.wss.max)}\n")
    if r.by_mapping:
        out.write("\nby mapping (sorted by p95):\n")
        t = Table([("p50(MiB)", 9), ("p95(MiB)", 9), ("p99(MiB)", 9), ("max(MiB)", 9), ("RSS(MiB)", 9),
                   ("KIND", -6), ("MAPPING", -1)], out)
        t.header()
        for m in r.by_mapping[:top or None]:
            a = m.accessed
            t.row([_mb(a.p50), _mb(a.p95), _mb(a.p99), _mb(a.max), _mb(m.rss_last_bytes), m.kind, m.label])
        if top and len(r.by_mapping) > top:
            out.write(f"... {len(r.by_mapping) - top} more mappings (--top 0 shows all)\n")


# -- hot / cold ------------------------------------------------------------------
def ranges_json(t: RangeTable, limit: int | None, order: str) -> dict:
    rows = t.rows(limit, order)
    for r in rows:
        r["start"], r["end"] = f"{r['start']:#x}", f"{r['end']:#x}"
    return {"threshold": t.threshold, "ranges_total": len(t), "pages_total": t.total_pages,
            "bytes_total": t.total_pages * _page(),
            "ranges": rows}


def _page() -> int:
    from ..kernel.maps import PAGE_SIZE
    return PAGE_SIZE


def print_ranges(kind: str, t: RangeTable, limit: int | None, order: str, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    th = t.threshold
    if kind == "hot":
        rule = (f"accessed in every one of {th['rounds']} rounds" if th["min_count"] == th["rounds"]
                else f"accessed in >= {th['min_count']} of {th['rounds']} rounds")
    else:
        rule = ("never accessed" if th["max_count"] == 0 else f"accessed in <= {th['max_count']} of "
                f"{th['rounds']} rounds") + " and resident in the last round"
        if th.get("min_idle_rounds") is not None:
            rule += f", idle for >= {th['min_idle_rounds']} rounds"
    out.write(f"{kind} pages ({rule}): {human_bytes(t.total_pages * _page())} "
              f"in {len(t)} range{'s' if len(t) != 1 else ''}\n")
    if not len(t):
        return
    tab = Table([("START", 18), ("END", 18), ("SIZE(MiB)", 10), ("PAGES", 9), ("COUNT", 9),
                 ("KIND", -6), ("MAPPING", -1)], out)
    tab.header()
    for r in t.rows(limit, order):
        cnt = str(r["count_min"]) if r["count_min"] == r["count_max"] else f"{r['count_min']}-{r['count_max']}"
        tab.row([f"{r['start']:#x}", f"{r['end']:#x}", _mb(r["size_bytes"]), r["pages"], cnt, r["kind"],
                 r["mapping"]])
    if limit and len(t) > limit:
        out.write(f"... {len(t) - limit} more ranges (--limit 0 shows all, --json lists all)\n")


# -- hot / cold by mapping (mapping-granular records) -----------------------------
def mappings_json(rows: list[dict], threshold: dict, kind: str) -> dict:
    out = [{**r, "start": f"{r['start']:#x}", "end": f"{r['end']:#x}"} for r in rows]
    total = sum(r["cold_bytes"] if kind == "cold" else r["wss_p50_bytes"] for r in rows)
    return {"threshold": threshold, "mappings_total": len(rows), "bytes_total": total, "mappings": out}


def print_mappings(kind: str, rows: list[dict], threshold: dict, limit: int | None, order: str,
                   out: IO[str] | None = None) -> None:
    """Hot or cold mappings: the unit is the mapping (per-mapping totals)."""
    out = out or sys.stdout
    R = threshold["rounds"]
    if kind == "hot":
        rule = (f"accessed in every one of {R} rounds" if threshold["min_count"] == R
                else f"accessed in >= {threshold['min_count']} of {R} rounds")
        total = sum(r["wss_p50_bytes"] for r in rows)
        out.write(f"hot mappings ({rule}): {human_bytes(total)} accessed per round (p50) "
                  f"in {len(rows)} mapping{'s' if len(rows) != 1 else ''}\n")
    else:
        rule = "resident in the last round, minus the most accessed in any one round"
        if threshold.get("max_count") is not None:
            rule += f"; accessed in <= {threshold['max_count']} of {R} rounds"
        if threshold.get("min_idle_rounds") is not None:
            rule += f"; idle for >= {threshold['min_idle_rounds']} rounds"
        total = sum(r["cold_bytes"] for r in rows)
        out.write(f"cold bytes by mapping ({rule}): {human_bytes(total)} in {len(rows)} "
                  f"mapping{'s' if len(rows) != 1 else ''}\n")
    if not rows:
        return
    if order == "va":
        rows = sorted(rows, key=lambda r: r["start"])
    tab = Table([("START", 18), ("RSS(MiB)", 10), ("WSS_P50(MiB)", 12), ("WSS_MAX(MiB)", 12),
                 ("COLD(MiB)", 10), ("ROUNDS", 7), ("KIND", -6), ("MAPPING", -1)], out)
    tab.header()
    for r in rows[:limit or None]:
        tab.row([f"{r['start']:#x}", _mb(r["rss_last_bytes"]), _mb(r["wss_p50_bytes"]),
                 _mb(r["wss_max_bytes"]), _mb(r["cold_bytes"]), f"{r['rounds_accessed']}/{R}",
                 r["kind"], r["mapping"]])
    if limit and len(rows) > limit:
        out.write(f"... {len(rows) - limit} more mappings (--limit 0 shows all, --json lists all)\n")
    if kind == "cold":
        out.write("COLD: resident in the last round minus the most accessed in one round; the bytes never "
                  "accessed when a mapping's hot pages are the same each round (an upper bound otherwise)\n")


# -- histograms ----------------------------------------------------------------------
def histograms_json(h: Histograms) -> dict:
    ps = h.page_size
    return {"rounds": h.rounds, "population_pages": h.population_pages,
            "population_bytes": h.population_pages * ps,
            "by_count": [{"count": c, "pages": int(p), "bytes": int(p) * ps} for c, p in enumerate(h.by_count)],
            "by_idle_age": [{"idle_rounds": a, "pages": int(p), "bytes": int(p) * ps}
                            for a, p in enumerate(h.by_idle_age)],
            "never_accessed_pages": h.never_accessed, "never_accessed_bytes": h.never_accessed * ps}


def _bars(out: IO[str], head: str, labels: list[str], pages: list[int], total: int, ps: int,
          width: int = 40) -> None:
    t = Table([(head, 10), ("PAGES", 10), ("MiB", 10), ("%", 6), ("", -1)], out)
    t.header()
    top = max(pages) if pages else 0
    for lab, p in zip(labels, pages):
        bar = "█" * int(round(width * p / top)) if top else ""
        if p and not bar:
            bar = "▏"
        t.row([lab, p, _mb(p * ps), f"{100.0 * p / total:.1f}" if total else "0.0", bar])


def print_histograms(h: Histograms, out: IO[str] | None = None, unit: str = "page") -> None:
    out = out or sys.stdout
    ps = h.page_size
    out.write(f"{human_bytes(h.population_pages * ps)} resident in at least one of {h.rounds} rounds\n\n")
    out.write(f"by access count (rounds in which a {unit} was accessed):\n")
    _bars(out, "COUNT", [str(c) for c in range(len(h.by_count))], [int(x) for x in h.by_count],
          h.population_pages, ps)
    out.write(f"\nby idle age (rounds since the {unit}'s last access, at the last round):\n")
    labels = [str(a) for a in range(len(h.by_idle_age))] + ["never"]
    _bars(out, "IDLE", labels, [int(x) for x in h.by_idle_age] + [h.never_accessed], h.population_pages, ps)


def wss_png(r: WssReport, path: str, title: str = "") -> None:
    """Working set and RSS over time, with the WSS p50 and p95 as lines."""
    Figure, Canvas = load_matplotlib()
    fig = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    t = np.asarray(r.series_time_s)
    ax.plot(t, np.asarray(r.series_bytes) / MiB, color="#d95f02", lw=1.6, marker="." if t.size <= 60 else None,
            label="WSS (accessed in the window)")
    if r.series_rss_bytes:
        ax.plot(t, np.asarray(r.series_rss_bytes) / MiB, color="#7570b3", lw=1.2, ls="--", label="RSS")
    for q, v, style in (("p50", r.wss.p50, ":"), ("p95", r.wss.p95, "-.")):
        ax.axhline(v / MiB, color="#1b9e77", lw=1, ls=style, label=f"WSS {q} {human_bytes(v)}")
    ax.set_xlabel("time (s since the first window began)")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"working set over {r.rounds} windows of {r.interval_mean_s:.3g} s "
                          + (f"(trend: {r.trend.direction})" if r.trend.direction != "unknown" else ""))
    _save(fig, Canvas, path)


def histograms_png(h: Histograms, path: str, title: str = "", unit: str = "page") -> None:
    Figure, Canvas = load_matplotlib()
    ps = h.page_size
    fig = Figure(figsize=(12, 6), dpi=100, layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    a1.bar(np.arange(len(h.by_count)), h.by_count * ps / MiB, color="#d95f02", width=0.85)
    a1.set_xlabel("access count (rounds accessed)")
    a1.set_ylabel("MiB")
    a1.set_title(f"{unit}s by access count (MiB)")
    ages = list(h.by_idle_age) + [h.never_accessed]
    xs = np.arange(len(ages))
    a2.bar(xs[:-1], np.array(ages[:-1]) * ps / MiB, color="#1b9e77", width=0.85)
    a2.bar(xs[-1:], [ages[-1] * ps / MiB], color="#7570b3", width=0.85, label="never accessed")
    a2.set_xlabel("idle age (rounds since the last access; last bar: never accessed)")
    a2.set_ylabel("MiB")
    a2.set_title(f"{unit}s by idle age (MiB)")
    a2.legend(fontsize=8)
    fig.suptitle(title or f"{human_bytes(h.population_pages * ps)} resident, {h.rounds} rounds")
    _save(fig, Canvas, path)
