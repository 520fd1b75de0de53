"""The known-schedule workload (schedule.c) and the truth it implies, for
the cgroup advisor test and bench.advise (which imports this through
bench.common.use_system_test_helpers).

The truth is computed here from the schedule alone, group by group,
independently of analysis/advise.py; time is the rounds' measured windows
(the same clock for truth and measurement).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from idlemap.testing.child import end, static_program

MiB = 1 << 20
SCHEDULE_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedule.c")


def schedule_binary() -> str:
    """schedule.c, built once per source version (gcc -static -pthread).
    Without gcc: idlemap.testing.child.NoCompiler, a RuntimeError."""
    return static_program(SCHEDULE_C, "-pthread")


@dataclass(frozen=True)
class Shape:
    hot_mib: int
    group_mib: int
    groups: int
    cold_mib: int

    @property
    def total_mib(self) -> int:
        return self.hot_mib + self.group_mib * self.groups + self.cold_mib


class Schedule:
    """One schedule.c process; joins ``cgroup`` (a directory) before its
    pages are written, so they are charged there.  Killed by PID on close."""

    def __init__(self, shape: Shape, cgroup: str | None = None):
        self.shape = shape
        self.proc = subprocess.Popen([schedule_binary(), str(shape.hot_mib), str(shape.group_mib),
                                      str(shape.groups), str(shape.cold_mib)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        try:
            if cgroup is not None:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(self.pid))
            self.addr = int(self._say("g", "ready")[1], 16)
        except BaseException:
            self.close()
            raise

    def _say(self, cmd: str, want: str) -> list[str]:
        self.proc.stdin.write(cmd)
        self.proc.stdin.flush()
        words = self.proc.stdout.readline().split()
        if not words or words[0] != want:
            raise AssertionError(f"schedule answered {words!r} to {cmd!r}")
        return words

    def round(self) -> None:
        """Hot set (unless looping) and warm group n mod GROUPS, written."""
        self._say("r", "done")

    def loop(self) -> None:
        """From now on a thread writes the hot set without pausing."""
        self._say("l", "looping")

    def passes(self) -> int:
        """Passes the loop has made over the hot set so far."""
        return int(self._say("c", "passes")[1])

    def close(self) -> None:
        end(self.proc)

    def __enter__(self) -> "Schedule":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def truth(shape: Shape, k: int, windows: list[float], nrounds: int) -> tuple[float, float, float, float]:
    """(cold mean bytes, cold bytes at the last round, promoted bytes,
    observed s) at threshold k for one process driven with ``round()``
    before each of ``nrounds`` readings: round r touches the hot set and
    group r mod GROUPS; the cold set only at the fill, before round 0."""
    P, G = shape.groups, shape.group_mib
    cold_sum, cold_n, last, prom, obs = 0.0, 0, 0.0, 0, 0.0
    for r in range(nrounds):
        if r >= k - 1:
            c = shape.cold_mib
            for g in range(P):
                age = (r - g) % P if g <= r else r + 1
                c += G if age >= k else 0
            cold_sum += c
            cold_n += 1
            last = c
        if r >= k:
            obs += windows[r]
            if P:
                g = r % P
                age_prev = P - 1 if g + P <= r else r
                prom += G if age_prev >= k else 0
    return cold_sum / cold_n * MiB if cold_n else 0.0, last * MiB, prom * MiB, obs


def group_truth(shapes: list[Shape], k: int, windows: list[float], nrounds: int) -> dict:
    """The truth for several processes read in the same rounds: sums, and
    the promotion rate against their summed data (the working set)."""
    parts = [truth(s, k, windows, nrounds) for s in shapes]
    ws = sum(s.total_mib for s in shapes) * MiB
    cold_mean = sum(p[0] for p in parts)
    cold_end = sum(p[1] for p in parts)
    prom = sum(p[2] for p in parts)
    obs = parts[0][3]
    rate = prom / ws / (obs / 60) * 100 if obs else 0.0
    return {"cold_mean_bytes": cold_mean, "cold_end_bytes": cold_end, "promoted_bytes": prom,
            "rate_pct_per_min": rate, "working_set_bytes": ws}
