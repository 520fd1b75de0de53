"""The one round loop every command uses: windows on a fixed grid, and a
stop that ends the run between rounds.

Timing: window k ends at t0 + (k+1)·interval -- not "interval after the
previous read" -- so the time a read takes does not drift the schedule.
A read that overruns its slot re-bases the grid instead of firing a burst
of short windows to catch up (each window's measured length says so).

Stopping: ``cli.main`` owns the signal handlers.  While a loop runs, the
first Ctrl-C or SIGTERM only sets :data:`STOP` (see :func:`stop_request`),
so the round in progress finishes with its syscalls and bookkeeping
together and the command prints its summary; a second one interrupts at
once (KeyboardInterrupt), as outside a loop.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class _Flag:
    """A stop flag a signal handler may set: a plain attribute and no lock.
    threading.Event.set() takes the Event's lock, and a handler runs in the
    main thread between two bytecodes -- also while that thread holds the
    same lock inside Event.wait() -- where it deadlocked (a wss that ignored
    SIGINT for good, once in CI; signals at random moments hang it within
    seconds, tests/unit/test_rounds.py)."""
    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


STOP = _Flag()
# How often a waiting loop looks at its stop flags: the most a stop waits.
POLL_S = 0.05
_loops = 0          # loops running (a loop inside a loop counts once each)
_last_stopped = False


def stop_request() -> bool:
    """Called by cli.main's signal handler: True if a running loop will
    stop at its next round (the first signal), False if the caller should
    interrupt now (no loop, or a second signal)."""
    if _loops and not STOP.is_set():
        STOP.set()
        return True
    return False


def paced(step: Callable[[], T], interval_s: float, count: int | None = None,
          t0: float | None = None, stop: threading.Event | None = None) -> Iterator[T]:
    """Yield ``step()`` once per window of ``interval_s`` seconds on a fixed
    grid from ``t0`` (default: now), ``count`` times (None: until stopped).
    Ends early, between rounds, when :data:`STOP` or ``stop`` is set."""
    global _loops, _last_stopped
    t0 = time.monotonic() if t0 is None else t0
    stops = [e for e in (STOP, stop) if e is not None]
    _loops += 1
    try:
        k = 0
        while count is None or k < count:
            delay = t0 + (k + 1) * interval_s - time.monotonic()
            if delay > 0:
                if _wait(stops, delay):
                    return
            else:
                t0 = time.monotonic() - (k + 1) * interval_s
            if any(e.is_set() for e in stops):
                return
            yield step()
            k += 1
    finally:
        _last_stopped = any(e.is_set() for e in stops)
        _loops -= 1
        if not _loops:
            STOP.clear()


def stopped() -> bool:
    """True if the last loop ended on a stop request rather than its count."""
    return _last_stopped


def _wait(events: list, delay: float) -> bool:
    """Sleep ``delay`` seconds or until one of ``events`` is set, looking
    every POLL_S: nothing here takes a lock a signal handler could need
    (is_set() of an Event reads a flag), and a signal ends the current
    slice's sleep early only to resume it (PEP 475)."""
    end = time.monotonic() + delay
    while True:
        if any(e.is_set() for e in events):
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, POLL_S))
