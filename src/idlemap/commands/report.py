"""idlemap report FILE KIND: reports from a record file.

The live commands (``idlemap hot``, ``idlemap heatmap``) scan and then call
:func:`show` with the same options, so a report reads the same whether its
rounds came from a file or from the process a moment ago.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

from .. import outputs, validate
from ..analysis import by_mapping, heatmap, hotness, wss
from ..errors import BadInput, UsageError
from ..formats.record import open_record
from ..render import heatmap as render_heatmap
from ..render import hotness as render_hotness
from ..render.units import human_bytes
from . import parse_range

HELP = "report on a record file: wss, hot, cold, histogram, heatmap, advise or info"
KINDS = ("wss", "hot", "cold", "histogram", "heatmap", "advise", "info")
EXAMPLES = """\
  idlemap report app.rec info                  # what was recorded, how, how many rounds
  idlemap report app.rec wss                   # WSS p50/p90/p95/p99/max, trend, by mapping
  idlemap report app.rec hot                   # ranges accessed in every round
  idlemap report app.rec hot --min-count 25    # ... in at least 25 rounds
  idlemap report app.rec cold --max-count 1    # resident, accessed in at most one round
  idlemap report app.rec hot --round-range 10:20   # only rounds 10..19 (a phase)
  idlemap report app.rec histogram --png hist.png
  idlemap report app.rec wss --png wss.png        # WSS and RSS over time, p50/p95 lines
  idlemap report app.rec heatmap --png heat.png   # terminal heatmap + PNG
  idlemap report app.rec heatmap --range 0x7f0000000000-0x7f0040000000
  idlemap report app.rec wss --json            # every report has --json
  idlemap report app.rec advise --target 0.2%/min   # savings per idle-age threshold (docs/advise.md)
"""
SCHEMA = "idlemap.report.{kind}/1"


def add_window_options(p) -> None:
    # --round-range, not --rounds: --rounds is a number of rounds in every
    # command that scans; --rounds A:B, the older name, is still accepted here.
    p.add_argument("--round-range", "--rounds", dest="rounds", metavar="A:B",
                   help="only rounds A..B-1 (Python slice; e.g. 10:20, -30:)")
    p.add_argument("--range", action="append", default=[], metavar="LO-HI", dest="va_range",
                   help="only pages inside this VA range (repeatable; hex with 0x)")


def add_threshold_options(p) -> None:
    g = p.add_argument_group("hot/cold thresholds")
    g.add_argument("--min-count", type=validate.whole(1, validate.MAX_COUNT, "a number of rounds"), metavar="K",
                   help="hot: accessed in at least K rounds (default: every round)")
    g.add_argument("--max-count", type=validate.whole(0, validate.MAX_COUNT, "a number of rounds"), metavar="K",
                   help="cold: accessed in at most K rounds (default 0: never; by mapping: no limit)")
    g.add_argument("--min-idle", type=validate.whole(0, validate.MAX_COUNT, "a number of rounds"), metavar="R",
                   help="cold: also idle for at least R rounds at the end")
    g.add_argument("--merge-gap", type=validate.pages, default=0, metavar="PAGES",
                   help="join ranges of one mapping separated by at most PAGES pages (default 0)")
    g.add_argument("--limit", type=validate.limit, default=40, metavar="N",
                   help="ranges printed (default 40; 0: all; --json always lists all)")
    # Biggest first by default: the ranges worth acting on, not tiny heap
    # ranges that happen to have low addresses.
    g.add_argument("--sort", choices=["va", "size"], default="size",
                   help="range order: size (default, biggest first) or va (by address)")


def add_picture_options(p, png_help: str = "also write a PNG (needs matplotlib)") -> None:
    g = p.add_argument_group("histogram/heatmap pictures")
    g.add_argument("--png", metavar="FILE", type=outputs.arg("the PNG"), help=png_help)
    g.add_argument("--rows", type=validate.rows, metavar="N", help="terminal heatmap rows (default: fits the terminal)")
    g.add_argument("--cols", type=validate.columns, metavar="N", help="terminal heatmap columns (default: fits the terminal)")
    g.add_argument("--png-rows", type=validate.whole(1, 10_000, "a number of rows"), default=320, metavar="N", help="PNG heatmap rows (default 320)")
    g.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="terminal heatmap colours (default auto: when stdout is a terminal)")


def add_arguments(p) -> None:
    p.add_argument("file", help="record file written by `idlemap record`")
    p.add_argument("kind", choices=KINDS, help="which report")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--top", type=validate.limit, default=12, metavar="N", help="wss: mappings shown (default 12; 0: all)")
    p.add_argument("--salvage", action="store_true",
                   help="read a damaged file up to its first bad frame instead of refusing it")
    add_window_options(p)
    add_threshold_options(p)
    add_picture_options(p)
    from .advise import add_target_option
    add_target_option(p)


# The reports that draw a PNG; --png elsewhere would be silently ignored.
PNG_KINDS = ("wss", "histogram", "heatmap", "advise")


def check_report_options(kind: str, args) -> None:
    """Refuse, before any work, options that this report would ignore."""
    if getattr(args, "png", None) and kind not in PNG_KINDS:
        raise UsageError(f"--png draws the wss, histogram, heatmap and advise reports, not {kind}"
                         + (" (hot --histogram --png FILE draws the histograms)" if kind in ("hot", "cold") else ""))
    if getattr(args, "cold", False) and kind == "histogram":
        raise UsageError("--cold and --histogram do not go together: the histograms cover every page, "
                         "hot and cold")


def parse_rounds(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    a, sep, b = text.partition(":")
    try:
        lo = int(a) if a.strip() else None
        hi = int(b) if b.strip() else None
        if not sep:               # a single round number
            hi = None if lo == -1 else (lo + 1 if lo is not None else None)
    except ValueError:
        raise UsageError(f"bad --round-range {text!r}: expected A:B, e.g. 10:20 or -30:") from None
    return lo, hi


def run(args) -> int:
    check_report_options(args.kind, args)
    if getattr(args, "png", None):
        outputs.probe(args.png, "the PNG")
    rec = open_record(args.file, salvage=args.salvage)
    if args.kind == "info":
        return _info(rec, args)
    if len(rec) == 0:
        raise BadInput(_no_rounds(rec, args.file))
    if rec.damaged_at is not None:
        print(f"idlemap: {args.file} is damaged at byte {rec.damaged_at}; "
              f"reporting the {len(rec)} rounds before it", file=sys.stderr)
    _check_memory(rec, args.file)
    h = hotness.build_history(rec.packed_rounds(), pid=rec.meta.pid)
    source = {"record": os.path.abspath(args.file), "pid": rec.meta.pid, "comm": rec.meta.comm,
              "backend": rec.meta.backend, "granularity": rec.meta.granularity, "interval_s": rec.meta.interval_s,
              "tlb_flush": rec.meta.tlb_flush, "tlb_exact": rec.meta.tlb_flush != "none"}
    return show(args.kind, h, args, source, window=parse_rounds(args.rounds),
                va_ranges=[parse_range(r) for r in args.va_range])


def _no_rounds(rec, path: str) -> str:
    """Why a record has nothing to report on, in one sentence."""
    if rec.damaged_at is not None:
        return f"{path} is damaged at byte {rec.damaged_at}, before its first round ended: nothing to report"
    if rec.complete:
        return (f"{path} holds no rounds: the recording ended before its first round"
                + (f" ({rec.end_reason})" if rec.end_reason else ""))
    return (f"{path} holds no finished round (its recorder is still in its first round, "
            "or was killed there)")


def _check_memory(rec, path: str) -> None:
    # One sentence instead of a MemoryError (or the OOM killer) part-way.
    need = rec.history_bytes()
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return
    if need > avail:
        raise UsageError(f"a report on the {len(rec)} rounds of {path} would need about {human_bytes(need)} "
                         f"of memory and {human_bytes(avail)} is available")


def _info(rec, args) -> int:
    d = rec.describe()
    if args.json:
        print(json.dumps({"schema": SCHEMA.format(kind="info"), **d}))
        return 0
    m = rec.meta
    import time as _t
    state = ("complete" if rec.complete else
             f"damaged at byte {rec.damaged_at} (--salvage); the rounds before it are readable"
             if rec.damaged_at is not None else
             "not closed (the recorder was killed or is still running); every finished round is readable")
    print(f"file:        {rec.path} ({human_bytes(d['size_bytes'])}, format {d['format_version']})")
    print(f"process:     PID {m.pid} ({m.comm}) {' '.join(m.cmdline)[:200]}")
    print(f"recorded:    {_t.strftime('%Y-%m-%d %H:%M:%S', _t.localtime(m.start_time))} on {m.hostname}, "
          f"kernel {m.kernel}")
    print(f"backend:     {m.backend} (granularity {m.granularity}), page size {m.page_size}, "
          f"tlb flush {m.tlb_flush}")
    if m.extra.get("address_space") == "guest-physical":
        g = m.extra.get("guest") or {}
        print(f"guest:       a VM ({g.get('vmm', '?')}, {g.get('accel', '?')}) with "
              f"{human_bytes(g.get('ram_bytes', 0))} of RAM; addresses are guest-physical")
    print(f"interval:    {m.interval_s:g} s" + (" (chosen by --auto-interval)" if m.auto_interval else ""))
    planned = f" of {m.rounds_planned} planned" if m.rounds_planned else ""
    print(f"rounds:      {len(rec)}{planned}; {state}" + (f"; ended: {rec.end_reason}" if rec.end_reason else ""))
    if rec.truncated_bytes:
        print(f"             a partial last frame ({rec.truncated_bytes} bytes) was ignored")
    return 0


def _terminal_size(args) -> tuple[int, int]:
    size = shutil.get_terminal_size((100, 40))
    rows = args.rows or max(8, min(48, size.lines - 8))
    cols = args.cols or max(10, size.columns - 28)
    return rows, cols


# What a report's unit is, said in every title: a clear_refs record has
# per-mapping totals only, a DAMON record one access count per region.
GRANULARITY_TEXT = {"page": "by page",
                    "region": "by DAMON region (the pages of a region share its access count)",
                    "mapping": "by mapping (per-mapping totals, no per-page map)"}


def granularity_of(source: dict, h: hotness.History | None = None) -> str:
    g = source.get("granularity") or (h.granularity if h is not None else "page")
    if h is not None and not h.per_page:
        g = "mapping"
    return g if g in GRANULARITY_TEXT else "page"


def _title(source: dict) -> str:
    who = f"PID {source.get('pid')} ({source.get('comm', '')})"
    where = f" from {os.path.basename(source['record'])}" if source.get("record") else " (live)"
    return who + where + ", " + GRANULARITY_TEXT[granularity_of(source)]


def show(kind: str, h: hotness.History, args, source: dict, window: tuple[int | None, int | None] = (None, None),
         va_ranges: list[tuple[int, int]] | None = None) -> int:
    """Print report ``kind`` over history ``h`` (text or --json), optionally
    only rounds ``window`` (a slice) and pages in ``va_ranges``."""
    if window != (None, None):
        h = h.window(*window)
    gran = granularity_of(source, h)
    source = {**source, "granularity": gran}
    if va_ranges:
        if gran == "mapping":
            raise UsageError("--range needs per-page rounds; this record has per-mapping totals only "
                             "(clear_refs): every report shows whole mappings instead")
        h = h.restrict(va_ranges)
    head = {"schema": SCHEMA.format(kind=kind), "source": source, "granularity": gran,
            "round_range": [h.first_round, h.first_round + h.nrounds]}
    if source.get("tlb_exact") is False and source.get("record") and not args.json:
        # Said once (a live scan said it when it started), so an unflushed
        # recording is never taken for exact.
        print(f"note: these rounds were not TLB-flushed (tlb flush {source.get('tlb_flush')}): hot pages "
              "cached in the TLB may read idle (docs/tlb.md)")
    if kind == "wss":
        r = wss.wss_report(h)
        png = getattr(args, "png", None)
        if not args.json:
            print(f"working set of {_title(source)}, rounds {h.first_round}..{h.first_round + h.nrounds - 1}")
            render_hotness.print_wss(r, args.top)
        if png:
            render_hotness.wss_png(r, png, f"{_title(source)}: working set over {r.rounds} windows "
                               f"of {r.interval_mean_s:.3g} s")
        if args.json:
            print(json.dumps({**head, **render_hotness.wss_json(r, args.top), **({"png": png} if png else {})}))
        elif png:
            print(f"\nwrote {png}")
        return 0
    if gran == "mapping" and kind in ("hot", "cold", "histogram", "heatmap"):
        return _show_by_mapping(kind, h, args, source, head)
    h.require_per_page(f"the {kind} report")
    if kind == "advise":
        from .advise import show as advise_show
        return advise_show(h, args, source, head)
    stats = hotness.page_stats(h)
    if kind in ("hot", "cold"):
        if kind == "hot":
            t = hotness.hot_ranges(h, stats, args.min_count, args.merge_gap)
        else:
            t = hotness.cold_ranges(h, stats, args.max_count or 0, args.min_idle, args.merge_gap)
        if args.json:
            print(json.dumps({**head, **render_hotness.ranges_json(t, None, args.sort)}))
        else:
            print(f"{_title(source)}")
            render_hotness.print_ranges(kind, t, args.limit or None, args.sort)
        return 0
    if kind == "histogram":
        hist = hotness.histograms(stats)
        if not args.json:
            print(f"{_title(source)}")
            render_hotness.print_histograms(hist, unit="region page" if gran == "region" else "page")
        if args.png:
            render_hotness.histograms_png(hist, args.png, f"{_title(source)}: {hist.rounds} rounds")
        if args.json:
            print(json.dumps({**head, **render_hotness.histograms_json(hist), "png": args.png}))
        elif args.png:
            print(f"\nwrote {args.png}")
        return 0
    if kind == "heatmap":
        return _heatmap(h, args, source, head)
    raise UsageError(f"unknown report {kind!r}")


def _show_by_mapping(kind: str, h: hotness.History, args, source: dict, head: dict) -> int:
    """hot, cold, histogram and heatmap with the mapping as the unit: what a
    clear_refs record (exact per-mapping totals, no per-page map) can say."""
    if kind in ("hot", "cold"):
        if kind == "hot":
            rows, th = by_mapping.hot_mappings(h, args.min_count)
        else:
            rows, th = by_mapping.cold_mappings(h, args.max_count, args.min_idle)
        if args.sort == "va":
            rows = sorted(rows, key=lambda r: r["start"])
        if args.json:
            print(json.dumps({**head, **render_hotness.mappings_json(rows, th, kind)}))
        else:
            print(f"{_title(source)}")
            render_hotness.print_mappings(kind, rows, th, args.limit or None, args.sort)
        return 0
    if kind == "histogram":
        hist = by_mapping.mapping_histograms(h)
        if not args.json:
            print(f"{_title(source)}: a mapping counts as accessed in a round when any of its bytes was")
            render_hotness.print_histograms(hist, unit="mapping")
        if args.png:
            render_hotness.histograms_png(hist, args.png, f"{_title(source)}: {hist.rounds} rounds", unit="mapping")
        if args.json:
            print(json.dumps({**head, **render_hotness.histograms_json(hist), "png": args.png}))
        elif args.png:
            print(f"\nwrote {args.png}")
        return 0
    return _heatmap(h, args, source, head)


def heatmap_json(d: heatmap.HeatmapData) -> dict:
    vals = np.round(d.values, 4)
    return {"rows": d.rows, "cols": d.cols, "pages_per_row": round(d.pages_per_row, 3),
            "shown_bytes": d.shown_bytes,
            "values": [[None if np.isnan(v) else float(v) for v in row] for row in vals],
            "row_va_start": [f"{int(v):#x}" for v in d.row_va_start],
            "row_va_end": [f"{int(v):#x}" for v in d.row_va_end],
            "col_rounds": [list(c) for c in d.col_rounds],
            "col_time_s": [round(float(t), 6) for t in d.col_time_s],
            "segments": [{"label": s.label, "kind": s.kind, "row_lo": round(s.row_lo, 3),
                          "row_hi": round(s.row_hi, 3), "va_start": f"{s.va_start:#x}",
                          "va_end": f"{s.va_end:#x}", "shown_bytes": s.shown_bytes, "mappings": s.mappings}
                         for s in d.segments],
            "collapsed": [[f"{a:#x}", f"{b:#x}"] for a, b in d.collapsed],
            "omitted_mappings": d.omitted_mappings}


def _heatmap(h: hotness.History, args, source: dict, head: dict) -> int:
    per_mapping = granularity_of(source, h) == "mapping"
    build = by_mapping.mapping_heatmap if per_mapping else heatmap.heatmap
    if args.json:
        _heatmap_png(h, args, source, build, per_mapping)
        d = build(h, rows=args.rows or 64, cols=args.cols or h.nrounds)
        print(json.dumps({**head, **heatmap_json(d), "png": args.png}))
        return 0
    # The terminal picture first: a PNG that fails to write must not take it along.
    rows, cols = _terminal_size(args)
    d = build(h, rows=rows, cols=cols)
    if d.rows == 0:
        raise UsageError("nothing was resident in these rounds: no heatmap to draw")
    color = {"always": True, "never": False}.get(args.color)
    what = "mapping (down, one row each)" if per_mapping else "address (down)"
    print(f"{_title(source)}: accessed share of resident pages, by {what} and time (right)")
    if d.omitted_mappings:
        print(f"({d.rows} biggest mappings shown, {d.omitted_mappings} smaller left out: --rows N shows more)")
    render_heatmap.print_heatmap(d, color=color)
    if args.png:
        _heatmap_png(h, args, source, build, per_mapping)
        print(f"wrote {args.png}")
    return 0


def _heatmap_png(h: hotness.History, args, source: dict, build, per_mapping: bool) -> None:
    if not args.png:
        return
    pd = build(h, rows=args.png_rows, cols=min(h.nrounds, 1200))
    if pd.rows == 0:
        raise UsageError("nothing was resident in these rounds: no heatmap to draw")
    iv = source.get("interval_s") or 0
    if per_mapping:
        sub = (f"{pd.rows} mappings ({human_bytes(pd.shown_bytes)}), one row each"
               + (f", {pd.omitted_mappings} smaller left out" if pd.omitted_mappings else ""))
    else:
        sub = (f"{human_bytes(pd.shown_bytes)} shown in {pd.rows} rows of "
               f"{human_bytes(pd.shown_bytes / pd.rows)}")
    sub += f", {h.nrounds} rounds" + (f" of {iv:g} s" if iv > 0 else "")
    render_heatmap.heatmap_png(pd, args.png, title=f"{_title(source)}: memory accessed by "
                   f"{'mapping' if per_mapping else 'address'} and time", subtitle=sub)
