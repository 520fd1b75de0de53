"""Plain text tables with units in the column headers."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO

MB = 1 << 20


def mb(n: float) -> str:
    return "-" if n is None or n < 0 else f"{n / MB:.2f}"


class Table:
    """Fixed-width columns printed as rows arrive (streaming, like bcc tools)."""

    def __init__(self, columns: Sequence[tuple[str, int]], out: IO[str] | None = None):
        self.columns = columns
        self.out = out or sys.stdout

    def header(self) -> None:
        self.row([c for c, _ in self.columns])

    def row(self, values: Sequence[object]) -> None:
        cells = []
        for (name, width), v in zip(self.columns, values):
            s = str(v)
            cells.append(s.ljust(width) if width < 0 else s.rjust(width))
        self.out.write(" ".join(cells).rstrip() + "\n")
        self.out.flush()


def json_line(obj: dict, out: IO[str] | None = None) -> None:
    o = out or sys.stdout
    o.write(json.dumps(obj, separators=(",", ":")) + "\n")
    o.flush()
