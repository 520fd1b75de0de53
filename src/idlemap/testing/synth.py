"""Synthetic rounds, for unit tests of pure code and for benchmarks of the
record format and reports on hosts without page_idle.

Nothing here talks to a kernel; the system tests (tests/system) are where
rounds come from real kernels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analysis.usage import idle_map_usage
from ..kernel.maps import PAGE_SHIFT, Mapping, classify
from ..records import IdleMap, Round, Span, WssSample


def mapping(start: int, size_bytes: int, path: str = "", perms: str = "rw-p") -> Mapping:
    return Mapping(start, start + size_bytes, perms, 0, "00:00", 0, path, classify(path, perms, 0))


def spans(maps: Sequence[Mapping]) -> list[Span]:
    out, off = [], 0
    for m in maps:
        out.append(Span(m, m.start, m.end, off))
        off += m.npages
    return out


def make_round(index: int, sp: Sequence[Span], accessed: np.ndarray, present: np.ndarray | None = None,
               huge: np.ndarray | None = None, swapped: np.ndarray | None = None, pid: int = 4242,
               interval_s: float = 1.0, t0: float = 1000.0, wall0: float = 1.7e9) -> Round:
    """A page-granular round: ``accessed`` (and ``present``, default all)
    are flat bool arrays over the spans."""
    n = int(accessed.size)
    present = np.ones(n, bool) if present is None else present
    acc = accessed & present
    zeros = np.zeros(n, bool)
    t = t0 + (index + 1) * interval_s
    m = IdleMap(pid, list(sp), present, present & ~acc, zeros if huge is None else huge,
                zeros if swapped is None else swapped, t, interval_s)
    s = WssSample(pid=pid, backend="page_idle", time_s=t, window_s=interval_s,
                  rss_bytes=int(present.sum()) << PAGE_SHIFT, pss_bytes=-1,
                  accessed_bytes=int(acc.sum()) << PAGE_SHIFT, by_mapping=idle_map_usage(m),
                  idle_map=m, scan_s=0.001)
    return Round(index, wall0 + (index + 1) * interval_s, s)


def meta(granularity: str = "page", interval_s: float = 1.0, rounds: int | None = None,
         pid: int = 4242) -> dict:
    from .. import __version__
    from ..kernel.maps import PAGE_SIZE
    return {"pid": pid, "comm": "synthetic", "cmdline": ["synthetic", "--workload"],
            "kernel": "synthetic", "hostname": "localhost", "backend": "page_idle" if granularity == "page"
            else "clear_refs", "granularity": granularity, "page_size": PAGE_SIZE,
            "interval_s": interval_s, "rounds_planned": rounds, "start_time": 1.7e9,
            "tlb_flush": "none", "idlemap_version": __version__, "auto_interval": None}
