"""Plain text tables with units in the column headers."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO

MB = 1 << 20


def mb(n: float) -> str:
    return "-" if n is None or n < 0 else f"{n / MB:.2f}"


def format_row(columns: Sequence[tuple[str, int]], values: Sequence[object]) -> str:
    """One line of fixed-width cells: width > 0 right-aligns (numbers),
    width < 0 left-aligns (names).  Every text table of idlemap uses it."""
    cells = []
    for (_, width), v in zip(columns, values):
        s = str(v)
        cells.append(s.ljust(-width) if width < 0 else s.rjust(width))
    return " ".join(cells).rstrip()


def rich_console(out: IO[str]):
    """A rich Console for ``out`` when rich is installed and ``out`` is a
    terminal; None otherwise (pipes, files and tests get plain text: the
    same characters, no escape codes)."""
    try:
        if not out.isatty():
            return None
        from rich.console import Console
    except (ImportError, AttributeError, ValueError):
        return None
    return Console(file=out, highlight=False, soft_wrap=True)


class Table:
    """Fixed-width columns printed as rows arrive (streaming, like bcc
    tools); on a terminal with rich installed the header is styled."""

    def __init__(self, columns: Sequence[tuple[str, int]], out: IO[str] | None = None):
        self.columns = columns
        self.out = out or sys.stdout
        self._console = rich_console(self.out)

    def header(self) -> None:
        line = format_row(self.columns, [c for c, _ in self.columns])
        if self._console is not None:
            self._console.print(line, style="bold reverse", markup=False)
        else:
            self._write(line)

    def row(self, values: Sequence[object]) -> None:
        self._write(format_row(self.columns, values))

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def json_line(obj: dict, out: IO[str] | None = None) -> None:
    o = out or sys.stdout
    o.write(json.dumps(obj, separators=(",", ":")) + "\n")
    o.flush()
