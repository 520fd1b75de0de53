"""Heatmaps of memory accesses, VA x time: a PNG (matplotlib) and a
terminal rendering, both drawn from one :class:`HeatmapData`.

Low addresses are at the top, as in /proc/PID/maps; time runs left to
right.  Cells are the accessed share of the resident pages they cover;
cells with no resident page are drawn grey (PNG) or blank (terminal), so
"not there" never looks like "idle".  Only mapped, at-some-point-resident
memory is drawn: unmapped gaps and long never-resident runs are collapsed
(analysis/hotness.py), and mapping boundaries are labelled.
"""
from __future__ import annotations

import os
import sys
from typing import IO

import numpy as np

from ..analysis.heatmap import HeatmapData
from ..errors import UsageError
from .units import human_bytes, short_label

NOT_RESIDENT = "#d0d0d0"
CMAP = "inferno"


def load_matplotlib():
    """matplotlib's object API with the Agg canvas (no display, no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("PNG output needs matplotlib: pip install 'idlemap[plot]' "
                         "(or pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_cls, path: str) -> None:
    # Through idlemap.outputs like every path option: a new file renamed
    # over ``path`` when whole; devices, FIFOs, directories refused.
    from ..outputs import writing
    canvas_cls(fig)
    with writing(path, "the PNG") as f:
        fig.savefig(f, format="png")


def heatmap_png(data: HeatmapData, path: str, title: str = "", subtitle: str = "") -> tuple[float, float, float, float]:
    """Write the heatmap to ``path`` as a PNG (1300 x 800 pixels).

    Returns where the cells were drawn, in image pixels from the top left
    (x0, y0, x1, y1), so tests can check the picture itself."""
    Figure, Canvas = load_matplotlib()
    import matplotlib
    from matplotlib import colors as mcolors

    fig = Figure(figsize=(13, 8), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps[CMAP]
    if hasattr(cmap, "with_extremes"):
        cmap = cmap.with_extremes(bad=NOT_RESIDENT)
    else:                                   # matplotlib < 3.4
        cmap = cmap.copy()
        cmap.set_bad(NOT_RESIDENT)
    x_edges = np.concatenate(([0.0], data.col_time_s)) if data.cols else np.array([0.0, 1.0])
    y_edges = np.arange(data.rows + 1)
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(data.values), cmap=cmap,
                         norm=mcolors.Normalize(0.0, 1.0), shading="flat", rasterized=True)
    ax.set_ylim(data.rows, 0)            # low addresses on top, as in /proc/PID/maps
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_xlabel("time since the first window began (s)")

    # mapping labels on the left, boundaries as thin lines, VAs on the right
    for i, s in enumerate(data.segments):
        if i:
            ax.axhline(s.row_lo, color="#4fc3f7", lw=0.8, alpha=0.9)
    # Labels (mapping on the left at its middle, VA on the right at its
    # start): when two would overprint, the bigger mapping keeps its label.
    min_gap = max(1.0, data.rows * 0.022)
    lab: list[tuple[float, str]] = []
    for s in sorted(data.segments, key=lambda s: -s.shown_bytes):
        mid = (s.row_lo + s.row_hi) / 2
        if all(abs(mid - r) >= min_gap for r, _ in lab):
            lab.append((mid, f"{short_label(s.label, 34)}  {human_bytes(s.shown_bytes)}"))
    lab.sort()
    ticks, labels = [r for r, _ in lab], [t for _, t in lab]
    va: list[tuple[float, str]] = []
    for s in sorted(data.segments, key=lambda s: -s.shown_bytes):
        if all(abs(s.row_lo - r) >= min_gap for r, _ in va):
            va.append((s.row_lo, f"{s.va_start:#x}"))
    va.sort()
    va_ticks, va_labels = [r for r, _ in va], [t for _, t in va]
    for r in data.collapsed_rows:
        # a never-resident run was cut out here
        ax.axhline(r, color="white", lw=1.0, ls=(0, (4, 3)), alpha=0.9)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.tick_params(axis="y", length=0)
    right = ax.secondary_yaxis("right")
    right.set_yticks(va_ticks, va_labels, fontsize=7, family="monospace")
    right.set_ylabel("virtual address (mapping start)", fontsize=8)

    cb = fig.colorbar(mesh, ax=ax, fraction=0.03, pad=0.01)
    cb.set_label("share of the cell's resident pages accessed")
    if data.collapsed:
        gap = sum(b - a for a, b in data.collapsed)
        subtitle = (subtitle + "; " if subtitle else "") + \
            f"{len(data.collapsed)} never-resident runs ({human_bytes(gap)}) collapsed"
    fig.suptitle(title or f"PID {data.pid}: memory accessed, by address and time", fontsize=12)
    if subtitle:
        ax.set_title(subtitle + "\ngrey: not resident" + ("; dashed white line: a never-resident run cut out"
                                                           if data.collapsed_rows else ""), fontsize=9)
    _save(fig, Canvas, path)
    bb = ax.get_window_extent()          # display pixels, origin bottom left
    height = fig.bbox.height
    return (bb.x0, height - bb.y1, bb.x1, height - bb.y0)


# -- terminal ---------------------------------------------------------------
RAMP = ".:-=+*#%@"          # '.' resident but not accessed ... '@' all accessed
# 256-colour backgrounds from black through red and orange to pale yellow
# (roughly the PNG's inferno map).
COLORS = [234, 53, 89, 125, 161, 196, 202, 208, 214, 221, 229]


def _level(v: float, levels: int) -> int:
    if v <= 0:
        return 0
    return min(levels - 1, 1 + int(v * (levels - 1) - 1e-9))


def _row_labels(data: HeatmapData, label_width: int) -> tuple[dict[int, str], dict[int, str]]:
    """Which row carries which mapping label (left) and start address (right).

    The biggest mappings choose first, so a thin "[heap] +1 more" at the top
    cannot take the row a 226 MiB [anon] below it needs; a mapping whose
    first row is taken uses the next free row inside its own rows."""
    left: dict[int, str] = {}
    right: dict[int, str] = {}
    if not data.rows:
        return left, right
    for s in sorted(data.segments, key=lambda s: (-s.shown_bytes, s.row_lo)):
        first = min(data.rows - 1, int(s.row_lo + 0.5))
        last = max(first, min(data.rows - 1, int(max(s.row_lo, s.row_hi - 1e-9))))
        free = [r for r in range(first, last + 1) if r not in left]
        if not free:
            continue
        r = free[0]
        left[r] = f"{short_label(s.label, label_width - 9)} {human_bytes(s.shown_bytes)}"
        right[r] = f"{s.va_start:#x}"
    return left, right


def heatmap_text(data: HeatmapData, color: bool = False, label_width: int = 24) -> list[str]:
    """The heatmap as terminal lines: one line per row, one cell per column;
    mapping labels on the left, each labelled mapping's start address on the
    right, then a time axis."""
    lines = []
    left, right = _row_labels(data, label_width)
    for i in range(data.rows):
        lab = left.get(i, "")
        row = data.values[i]
        cells = []
        for v in row:
            if np.isnan(v):
                cells.append(" ")
            elif color:
                cells.append(f"\033[48;5;{COLORS[_level(v, len(COLORS))]}m \033[0m")
            else:
                cells.append(RAMP[_level(v, len(RAMP))])
        addr = right.get(i)
        lines.append((f"{lab[:label_width]:>{label_width}} |" + "".join(cells) + (f"| {addr}" if addr else "|")))
    # time axis: start and end of the recording under the first and last cell
    w = data.cols
    marks = ""
    if w:
        end = f"{data.col_time_s[-1]:.1f} s"
        marks = ("0 s".ljust(max(0, w - len(end))) + end) if w >= len(end) + 4 else end
    lines.append(" " * label_width + " +" + "-" * w + "+ start address")
    lines.append(" " * label_width + "  " + marks)
    return lines


def key_text(color: bool = False) -> str:
    """The colour (or character) key: what share of a cell's resident
    pages each step stands for."""
    def step(levels: int, k: int) -> str:
        if k == 0:
            return "0%"
        lo = (k - 1) / (levels - 1) * 100
        hi = k / (levels - 1) * 100
        return f"{lo:.0f}-{hi:.0f}%"
    if color:
        parts = [f"\033[48;5;{c}m  \033[0m {step(len(COLORS), k)}" for k, c in enumerate(COLORS)]
    else:
        parts = [f"'{ch}' {step(len(RAMP), k)}" for k, ch in enumerate(RAMP)]
    return "key (share of the cell's resident pages accessed): " + "  ".join(parts) + "  ' ' not resident"


def legend_text(data: HeatmapData, color: bool = False) -> str:
    per_col = {hi - lo + 1 for lo, hi in data.col_rounds}
    rc = f"{min(per_col)}" if len(per_col) == 1 else f"{min(per_col)}-{max(per_col)}"
    gran = getattr(data, "granularity", "page")
    cell = ("one mapping" if gran == "mapping" else
            f"{human_bytes(data.shown_bytes / max(1, data.rows))}")
    return f"cell: {cell} x {rc} round(s)\n" + key_text(color)


def print_heatmap(data: HeatmapData, out: IO[str] | None = None, color: bool | None = None) -> None:
    out = out or sys.stdout
    if color is None:
        color = out.isatty() and os.environ.get("NO_COLOR") is None
    for line in heatmap_text(data, color=color):
        out.write(line + "\n")
    out.write(legend_text(data, color) + "\n")
