"""One validation layer for every numeric option and argument.

argparse's ``type=float`` takes "nan", "inf" and "1e308", and ``type=int``
takes any size: each such value used to end in a traceback deep in a
command (``time.sleep(nan)``, ``2 ** 2000``) or, worse, be accepted
silently (a record header with ``"interval_s": NaN`` that its own reader
refuses).  These ``type=`` functions refuse them while options are
parsed: finite, within a stated range, with the unit named in the one
sentence.  Positional numbers (``wss PID interval count``) go through
:func:`parse` with the same functions.
"""
from __future__ import annotations

import argparse
import math

from .errors import UsageError

WEEK_S = 7 * 24 * 3600.0          # longest window any command takes: beyond it is a typo
MAX_COUNT = 1 << 31               # rounds, windows, rows: more is never meant
PID_MAX = (1 << 63) - 1          # beyond the kernel's PID_MAX_LIMIT is "no such process" (exit 1), as for a PID argument


def _fmt(v: float) -> str:
    return f"{v:g}"


def seconds(lo: float = 0.0, hi: float = WEEK_S, lo_ok: bool = False, unit: str = "seconds"):
    """A finite duration in ``(lo, hi]`` (``[lo, hi]`` with ``lo_ok``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v) or not (lo <= v if lo_ok else lo < v) or v > hi:
            left = "[" if lo_ok else "("
            raise argparse.ArgumentTypeError(
                f"must be a number of {unit} in {left}{_fmt(lo)}, {_fmt(hi)}], not {text!r}")
        return v
    parse.__name__ = unit
    parse.idlemap_numeric = True        # tests find every numeric option by this mark
    return parse


def number(lo: float, hi: float, unit: str, lo_ok: bool = False):
    """A finite number in ``(lo, hi]`` (``[lo, hi]`` with ``lo_ok``), in ``unit``."""
    return seconds(lo, hi, lo_ok, unit)


def whole(lo: int = 1, hi: int = MAX_COUNT, unit: str = "a whole number"):
    """An integer in ``[lo, hi]``; ``unit`` names what it counts ("rounds")."""
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except (TypeError, ValueError):
            v = None
        if v is None or not lo <= v <= hi:
            # both ends named, always: "at least 1" alone hides why 99999999999 is refused
            bound = f"at least {lo} and at most {hi}" if hi >= MAX_COUNT else f"from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"must be {unit}, {bound}, not {text!r}")
        return v
    parse.__name__ = unit
    parse.idlemap_numeric = True
    return parse


_SIZE_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def size(lo: int = 0, hi: int = 1 << 50, unit: str = "a size"):
    """Bytes: a number with an optional binary suffix (K, M, G, T; "KiB",
    "MB" ... mean the same: powers of 1024), in ``[lo, hi]``; "512M", "4G"."""
    import re
    pat = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)

    def parse(text: str) -> int:
        m = pat.match(text or "")
        if not m:
            raise argparse.ArgumentTypeError(f"must be {unit} in bytes with an optional K/M/G/T suffix "
                                             f"(e.g. 512M, 4G), not {text!r}")
        f = float(m.group(1)) * (1 << _SIZE_SHIFT[m.group(2).lower()])     # inf for 309+ digits
        if not lo <= f <= hi:
            raise argparse.ArgumentTypeError(f"must be {unit} from {_human(lo)} to {_human(hi)}, not {text!r}")
        return int(f)
    parse.__name__ = unit
    parse.idlemap_numeric = True
    return parse


def _human(n: int) -> str:
    """A size bound as the user would type it: 0, 512M, 1024T."""
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


# The ones most options share.
interval = seconds()                                    # a window or period, > 0
rounds = whole(1, MAX_COUNT, "a number of rounds")
count = whole(1, MAX_COUNT, "a positive whole number")
rows = whole(1, 100_000, "a number of rows")
columns = whole(1, 100_000, "a number of columns")
limit = whole(0, MAX_COUNT, "a number of rows (0: all)")
pid = whole(1, PID_MAX, "a process ID")
percent = number(0, 100, "percent", lo_ok=True)
pages = whole(0, 1 << 36, "a number of pages")


def parse(text: str, fn, name: str):
    """``fn(text)`` for a positional argument: a UsageError naming it."""
    try:
        return fn(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{name} {e}") from None
