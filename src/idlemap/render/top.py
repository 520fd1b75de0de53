"""Rendering of system-wide samples: plain tables, JSON, and a live view.

``frame()`` turns a sample into plain data (title, columns, rows); the
plain, JSON and rich renderers only lay that data out, so tests assert on
the data.  The live view uses ``rich`` where installed (``pip install
idlemap[tui]``) and falls back to redrawing plain text with ANSI codes.
"""
from __future__ import annotations

import sys
import os
import time
from dataclasses import dataclass
from typing import IO

from ..analysis.system import SystemSample, sort_rows
from .text import format_row, mb

SCHEMA = "idlemap.top/1"


@dataclass(frozen=True)
class Block:
    columns: list[tuple[str, int]]     # (header with unit, width; negative: left-aligned)
    rows: list[list[str]]


@dataclass(frozen=True)
class Frame:
    title: str
    notes: list[str]
    blocks: list[Block]


def _pct(v: float) -> str:
    return f"{v:.1f}"


def frame(s: SystemSample, sort: str = "wss", n: int = 0, pss: bool = False,
          cgroups: bool = False, round_no: int = 0, subtitle: str = "") -> Frame:
    title = (f"idlemap top - {time.strftime('%H:%M:%S')}  window {s.window_s:.2f} s  "
             f"backend {s.backend} ({s.granularity})  processes {len(s.processes)}  "
             f"RSS {mb(s.total_rss_bytes)} MiB  WSS {mb(s.total_wss_bytes)} MiB  scan {s.scan_s:.2f} s")
    notes = [subtitle] if subtitle else []
    if s.new_processes:
        notes.append(f"{s.new_processes} new process(es) marked now, shown from the next window")
    if s.denied:
        # As root, what stays unreadable is another user namespace's or a
        # process that hid itself (hidepid): "run as root" would be no help.
        notes.append(f"{s.denied} process(es) not readable"
                     + (" (run as root)" if os.geteuid() != 0 else " (even as root: another namespace?)"))
    notes += s.errors[:3]
    cols = [("PID", 7), ("COMM", -16), ("RSS(MiB)", 10), ("WSS(MiB)", 10), ("COLD(MiB)", 10), ("WSS%", 6)]
    if pss:
        cols += [("PSS(MiB)", 10), ("WSS_PSS(MiB)", 12)]
    cols += [("CGROUP", -1)]
    rows = []
    for p in sort_rows(s.processes, sort, n):
        r = [str(p.pid), p.comm[:16], mb(p.rss_bytes), mb(p.wss_bytes), mb(p.cold_bytes), _pct(p.wss_pct)]
        if pss:
            r += [mb(p.pss_bytes), mb(p.wss_pss_bytes)]
        rows.append(r + [p.cgroup or "-"])
    blocks = [Block(cols, rows)]
    if cgroups:
        ccols = [("PROCS", 6), ("RSS(MiB)", 10), ("WSS(MiB)", 10), ("COLD(MiB)", 10), ("WSS%", 6)]
        if pss:
            ccols += [("PSS(MiB)", 10), ("WSS_PSS(MiB)", 12)]
        ccols += [("CGROUP", -1)]
        crows = []
        for c in sort_rows(s.cgroups, sort, n):
            r = [str(c.nprocs), mb(c.rss_bytes), mb(c.wss_bytes), mb(c.cold_bytes), _pct(c.wss_pct)]
            if pss:
                r += [mb(c.pss_bytes), mb(c.wss_pss_bytes)]
            crows.append(r + [c.cgroup or "-"])
        blocks.append(Block(ccols, crows))
    if s.guests:
        gcols = [("VMM_PID", 7), ("RAM(MiB)", 10), ("RSS(MiB)", 10), ("WSS(MiB)", 10), ("COLD(MiB)", 10),
                 ("ACCEL", -5), ("VM", -1)]
        grows = [[str(g.pid), mb(g.ram_bytes), mb(g.rss_bytes), mb(g.wss_bytes), mb(g.cold_bytes), g.accel,
                  f"{g.vmm} {g.name}".strip()] for g in sorted(s.guests, key=lambda g: -g.wss_bytes)]
        blocks.append(Block(gcols, grows))
    return Frame(title, notes, blocks)


def plain(f: Frame) -> str:
    out = [f.title] + [f"  {x}" for x in f.notes]
    for b in f.blocks:
        out.append(format_row(b.columns, [c for c, _ in b.columns]))
        out += [format_row(b.columns, r) for r in b.rows]
    return "\n".join(out) + "\n"


def as_json(s: SystemSample, sort: str, n: int, cgroups: bool, round_no: int) -> dict:
    d = {"schema": SCHEMA, "round": round_no, "time": time.time(), "backend": s.backend,
         "granularity": s.granularity, "window_s": round(s.window_s, 4), "scan_s": round(s.scan_s, 4),
         "frames": s.frames, "total_rss_bytes": s.total_rss_bytes, "total_wss_bytes": s.total_wss_bytes,
         "new_processes": s.new_processes, "vanished": s.vanished, "denied": s.denied,
         "errors": s.errors, "processes": [p.as_dict() for p in sort_rows(s.processes, sort, n)]}
    if cgroups:
        d["cgroups"] = [c.as_dict() for c in sort_rows(s.cgroups, sort, n)]
    if s.guests:
        d["guests"] = [g.as_dict() for g in s.guests]
    return d


class LiveView:
    """Redraw in place on a terminal: rich if installed, else ANSI clear."""

    def __init__(self, out: IO[str] | None = None):
        self.out = out or sys.stdout
        self._live = None
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError:
            return
        self._console = Console(file=self.out)
        self._live = Live(console=self._console, auto_refresh=False, screen=False,
                          vertical_overflow="crop")
        self._live.start()

    def show(self, f: Frame) -> None:
        if self._live is None:
            self.out.write("\x1b[H\x1b[2J" + plain(f))
            self.out.flush()
            return
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
        parts = [Text(f.title, style="bold")] + [Text(x, style="yellow") for x in f.notes]
        for b in f.blocks:
            t = Table(box=None, pad_edge=False, header_style="bold reverse")
            for name, w in b.columns:
                t.add_column(name, justify="left" if w < 0 else "right", no_wrap=True)
            for r in b.rows:
                t.add_row(*r)
            parts.append(t)
        self._live.update(Group(*parts), refresh=True)

    def message(self, text: str) -> None:
        if self._live is None:
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
            self.out.flush()
        else:
            from rich.text import Text
            self._live.update(Text(text), refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def rows_that_fit(lines: int, cgroups: bool) -> int:
    """Rows per table that fit a terminal of ``lines`` lines."""
    spare = max(3, lines - 6)
    return max(3, spare // 2 - 1) if cgroups else spare
