"""Progress of long scans on stderr: rounds done, elapsed, estimated remaining.

Quiet when stderr is not a terminal (logs and pipes get no carriage-return
noise), and it erases itself before anything else is printed.  On a
terminal with ``rich`` installed (the ``tui`` extra) the same line is drawn
beside a rich progress bar; the text, the estimate and when it shows are
this module's either way (one code path, two ways to draw).
"""
from __future__ import annotations

import sys
import time
from typing import IO


def _dur(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(s + 0.5), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """``p = Progress(total=120, what="rounds"); p.update(done); p.done()``.

    ``interval_s`` (if the work is paced by a clock) makes the estimate
    "rounds left x interval" instead of extrapolating the elapsed time.
    """

    def __init__(self, total: int | None, what: str = "rounds", interval_s: float | None = None,
                 out: IO[str] | None = None, enabled: bool | None = None):
        self.out = out or sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self.total = total
        self.what = what
        self.interval_s = interval_s
        self.t0 = time.monotonic()
        self._shown = False
        self._rich = None                 # (rich Progress, task id) once drawn with rich

    def _rich_bar(self):
        # Only on a real terminal: rich on a pipe or a StringIO prints its
        # frames at the end instead of redrawing, which is worse than nothing.
        if self._rich is None and getattr(self.out, "isatty", lambda: False)():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, TextColumn
                from rich.progress import Progress as RichProgress
            except ImportError:
                self._rich = False
                return None
            rp = RichProgress(BarColumn(bar_width=24), TextColumn("{task.description}"),
                              console=Console(file=self.out), transient=True, auto_refresh=False)
            rp.start()
            self._rich = (rp, rp.add_task("", total=self.total))
        return self._rich or None

    def line(self, done: int, extra: str = "") -> str:
        el = time.monotonic() - self.t0
        s = f"{self.what} {done}" + (f"/{self.total}" if self.total else "") + f"  elapsed {_dur(el)}"
        if self.total and done:
            left = self.total - done
            eta = left * self.interval_s if self.interval_s else el / done * left
            s += f"  remaining ~{_dur(eta)}"
        return s + (f"  {extra}" if extra else "")

    def update(self, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        bar = self._rich_bar()
        if bar:
            rp, task = bar
            rp.update(task, completed=done, description=self.line(done, extra))
            rp.refresh()
        else:
            self.out.write("\r\033[K" + self.line(done, extra))
            self.out.flush()
        self._shown = True

    def clear(self) -> None:
        if self._rich:
            self._rich[0].stop()          # transient: the bar erases itself
            self._rich = None
            self._shown = False
            return
        if self.enabled and self._shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._shown = False

    done = clear
