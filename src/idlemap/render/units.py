"""Human-readable sizes and labels shared by the text and image renderers."""
from __future__ import annotations

import os


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, three significant digits."""
    if n is None or n < 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.3g} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} TiB"


def short_label(label: str, width: int = 28) -> str:
    """A mapping label that fits: a file's base name, else the label cut."""
    if label.startswith("/") and not label.startswith("/SYSV"):
        base = os.path.basename(label.split(" (deleted)")[0]) or label
        label = base + (" (deleted)" if label.endswith(" (deleted)") else "")
    return label if len(label) <= width else label[:width - 1] + "…"
