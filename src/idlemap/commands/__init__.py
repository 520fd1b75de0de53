"""Thin commands: parse options, call backends/analysis, hand results to renderers."""
from __future__ import annotations

import argparse

from ..errors import UsageError


def pid_arg(p: argparse.ArgumentParser) -> None:
    """bcc grammar: ``cmd [-p PID] ...`` or ``cmd PID ...``."""
    p.add_argument("-p", "--pid", dest="pid_opt", type=int, metavar="PID", help="target process")


def take_pid(args, positional: list) -> tuple[int, list]:
    """Resolve the PID from -p or the first positional; return the rest."""
    if args.pid_opt is not None:
        return args.pid_opt, positional
    if not positional:
        raise UsageError("give the target's PID (idlemap CMD PID, or -p PID)")
    try:
        return int(positional[0]), positional[1:]
    except ValueError:
        raise UsageError(f"PID must be a number, not {positional[0]!r}") from None


def parse_range(text: str) -> tuple[int, int]:
    """'0x7f00-0x7fff' or '140000000000-140000100000' (hex with 0x, else decimal)."""
    try:
        a, b = text.split("-", 1)
        lo, hi = int(a, 0), int(b, 0)
    except ValueError:
        raise UsageError(f"bad range {text!r}: expected START-END, e.g. 0x7f0000000000-0x7f0040000000") from None
    if hi <= lo:
        raise UsageError(f"bad range {text!r}: END must be above START")
    return lo, hi
