"""Multi-round scanning: N windows of one interval, one :class:`Round` each.

This is memory-optimizer's ``task-refs`` loop on top of idlemap's backends:
mark every page "not accessed", let the target run one interval, read which
pages were accessed, mark again, repeat.  A page's *access count* over N
rounds is how many windows saw it accessed (0..N); hot pages are seen in
every round, cold ones in none (analysis/hotness.py does that arithmetic).

The loop is split so that tests can drive it without a clock::

    sc = Scanner(proc, backend="page_idle")
    sc.start()                  # mark: the first window opens
    workload.touch(...)         # exactly the pages of this round, acked
    r = sc.round()              # read + re-mark: Round 0 closes, 1 opens

``Scanner.run(count, interval_s)`` is the same thing paced by the clock,
for the commands.  :func:`calibrate` is the ``--auto-interval`` rule
(docs/reports.md states it).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from . import backends, rounds, tlb
from .analysis.spans import merge_ranges
from .kernel.process import ProcessId
from .records import Round

class Scanner:
    """Rounds of one backend over one process (see the module docstring)."""

    def __init__(self, proc: ProcessId, backend: str = "auto", need_per_page: bool = False,
                 tlb_flush: str = "auto", ranges: Iterable[tuple[int, int]] | None = None,
                 with_pss: bool = False, guest=None, backend_kw: dict | None = None,
                 acting: bool = False, unsafe_no_tlb_flush: bool = False):
        """``guest``: a vm.GuestLayout -- ``proc`` is its VMM and the
        rounds come in guest-physical terms (spans are guest RAM regions).
        ``tlb_flush`` is what the user asked for (tlb.MODES); ``acting``:
        the rounds decide reclaim or tiering, so they must be flushed
        (tlb.resolve refuses otherwise)."""
        self.proc = proc
        self.choice = backends.choose_for(backend, proc.pid, need_per_page=need_per_page)
        cls = self.choice.cls
        if acting:
            backends.refuse_blind_action(proc.pid, self.choice)
        self.tlb = tlb.resolve_for(proc, tlb_flush, cls, acting=acting, unsafe=unsafe_no_tlb_flush)
        self.ranges = merge_ranges(ranges)
        self.guest = guest
        kw = dict(backend_kw or {})          # backend_kw: e.g. DAMON settings
        if cls.caps.tlb_flush:
            kw["tlb_flush"] = self.tlb_flush
        if guest is not None:
            from .backends.guest import GuestBackend
            self.backend = GuestBackend(cls, proc, guest, **kw)
        elif cls.caps.per_page:
            self.backend = cls(proc, ranges=self.ranges, with_pss=with_pss, **kw)
        else:
            if self.ranges is not None:
                from .errors import UsageError
                raise UsageError(f"--range needs a per-page backend ({' or '.join(backends.per_page_names())}); "
                                 f"{cls.name} measures whole {cls.caps.granularity}s")
            self.backend = cls(proc, **kw)
        self.index = 0
        self.started_at: float | None = None
        self.window_started: float | None = None

    @property
    def tlb_flush(self) -> str:
        """The flush each mark is followed by (tlb.TlbPolicy.flush)."""
        return self.tlb.flush

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def granularity(self) -> str:
        return self.backend.caps.granularity

    def start(self) -> None:
        """Open the first window (mark every page not accessed)."""
        self.backend.mark()
        self.started_at = self.window_started = time.monotonic()

    def round(self) -> Round:
        """Close the current window, open the next; return the closed one."""
        if self.started_at is None:
            self.start()
        s = self.backend.sample(remark=True)
        self.window_started = time.monotonic()     # the re-mark opened the next window
        r = Round(self.index, time.time(), s)
        self.index += 1
        return r

    def run(self, count: int | None, interval_s: float,
            on_round: Callable[[Round], None] | None = None) -> Iterator[Round]:
        """``count`` rounds (None: until stopped) on rounds.paced's fixed grid
        from the first mark; a stop request ends the run between rounds."""
        if self.started_at is None:
            self.start()
        # The grid starts where the open window did (the first mark, or the
        # last round's re-mark if rounds were taken before, e.g. to calibrate).
        for r in rounds.paced(self.round, interval_s, count, t0=self.window_started):
            if on_round:
                on_round(r)
            yield r

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Scanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- --auto-interval ---------------------------------------------------------
GROWTH_STABLE = 1.25      # doubling the window grows the working set by < 25 %
SATURATED = 0.9           # ... or 90 % of resident memory is already accessed
SLACK_FRACTION = 0.01     # absolute slack (1 % of RSS) so tiny sets count as stable


@dataclass(frozen=True)
class Calibration:
    interval_s: float
    reason: str
    steps: list[tuple[float, float]]      # (window_s, accessed fraction of RSS)

    def as_dict(self) -> dict:
        return {"interval_s": self.interval_s, "reason": self.reason,
                "steps": [{"window_s": round(w, 6), "accessed_fraction": round(f, 6)} for w, f in self.steps]}


def choose_interval(steps: list[tuple[float, float]], max_s: float) -> Calibration | None:
    """The --auto-interval rule over cumulative windows t, 2t, 4t, ...

    ``steps`` are (window length, fraction of resident memory accessed in
    it) for windows that all start at the same mark and double in length.
    The chosen interval is the shortest t at which the hot set is stable:
    the working set at 2t is within 25 % (+1 % of RSS) of the one at t --
    a longer window would mostly re-count the same pages.  If the first
    window already sees >= 90 % of memory accessed, it is chosen (shorter
    ones were not tried: t_min is the floor).  If no window up to
    ``max_s`` is stable, ``max_s``'s is.  None: measure another window.
    """
    if not steps:
        return None
    if steps[0][1] >= SATURATED:
        return Calibration(steps[0][0], "saturated: the shortest window already sees most memory accessed",
                           list(steps))
    for (t, f), (_, f2) in zip(steps, steps[1:]):
        if f2 <= f * GROWTH_STABLE + SLACK_FRACTION:
            return Calibration(t, "stable: doubling the window grows the working set by less than 25%",
                               list(steps))
        if f2 >= SATURATED:
            return Calibration(t, "the next doubling would see most memory accessed", list(steps))
    if steps[-1][0] >= max_s:
        return Calibration(steps[-1][0], "no stable window up to the maximum interval", list(steps))
    return None


def calibrate(scanner: Scanner, min_s: float = 0.1, max_s: float = 30.0,
              sleep: Callable[[float], None] = time.sleep) -> Calibration:
    """Pick the round interval by the rule of :func:`choose_interval`.

    One mark, then cumulative reads at min_s, 2·min_s, 4·min_s ... (no
    re-mark between them, so each read sees the whole window since the
    mark, like ``wss -P``).  Costs at most twice the chosen interval.
    """
    be = scanner.backend
    be.mark()
    t0 = time.monotonic()
    steps: list[tuple[float, float]] = []
    t = min_s
    while True:
        sleep(max(0.0, t0 + t - time.monotonic()))
        s = be.sample(remark=False)
        frac = s.accessed_bytes / s.rss_bytes if s.rss_bytes > 0 else 0.0
        steps.append((t, frac))
        c = choose_interval(steps, max_s)
        if c is not None:
            return c
        t = min(t * 2, max_s)
