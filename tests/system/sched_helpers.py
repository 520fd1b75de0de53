"""The known-schedule workload (schedule.c) and the truth it implies, for
the cgroup advisor tests (test_advise_vm in the test VM, test_advise_stock
on the stock kernels: the same reading and comparison, below) and
bench.advise (which imports this through bench.common.use_system_test_helpers).

The truth is computed here from the schedule alone, group by group,
independently of analysis/advise.py; time is the rounds' measured windows
(the same clock for truth and measurement).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
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


# -- the cgroup advisor on the known schedule ---------------------------------
# Two processes with different periods (4 and 2 rounds), for the cgroup
# advisor tests in the test VM (page_idle) and on the stock kernels (kmod).
SHAPES = [Shape(32, 8, 4, 64), Shape(16, 4, 2, 48)]
SHAPES_DOC = "two schedule.c processes: (32 hot, 4 groups of 8, 64 cold) and (16 hot, 2 groups of 4, 48 cold) MiB"


@contextlib.contextmanager
def scheduled(shapes: list[Shape], cgroup: str):
    """One Schedule per shape, all in ``cgroup``; closed on exit."""
    procs: list[Schedule] = []
    try:
        for s in shapes:
            procs.append(Schedule(s, cgroup))
        yield procs
    finally:
        for p in procs:
            p.close()


@dataclass
class GroupReading:
    advice: object          # the group's Advice (analysis/advise.py)
    own: dict               # pid -> that process's own Advice
    windows: list           # the rounds' measured windows, s
    backend: str            # the backend CgroupScan chose


def read_group(cgroup: str, procs: list[Schedule], nrounds: int, expect_backend: str | None = None) -> GroupReading:
    """``nrounds`` rounds of CgroupScan (what `advise --cgroup` and
    `reclaim --cgroup` use) over ``procs``, each round driven first, whole
    address spaces (a static process maps < 1 MiB besides its data)."""
    from idlemap.cgroup_scan import CgroupScan
    from idlemap.kernel import cgroup as cg
    scan = CgroupScan(cg.resolve(cgroup), kmax=nrounds)
    if expect_backend is not None:
        assert scan.backend_name == expect_backend, scan.choice.reason
    windows: list[float] = []
    try:
        scan.start()
        assert sorted(scan.members) == sorted(p.pid for p in procs) and scan.tlb["tlb_exact"]
        for _ in range(nrounds):
            for p in procs:
                p.round()
            time.sleep(0.2)
            windows.append(scan.round().window_s)
            scan.sync()
        adv = scan.acc.advice(0.2)
        own = {m.pid: m.acc.advice(0.2) for m in scan.members.values()}
    finally:
        scan.close()
    return GroupReading(adv, own, windows, scan.backend_name)


def compare(shapes: list[Shape], got: GroupReading, nrounds: int) -> dict:
    """The group's advice against the schedule's truth: the worst relative
    errors over the thresholds, a row per threshold, and the advised
    threshold's true cold bytes at the end."""
    rows, worst_cold, worst_rate = [], 0.0, 0.0
    for t in got.advice.thresholds:
        tr = group_truth(shapes, t.rounds, got.windows, nrounds)
        cold_err = abs(t.cold_mean_bytes - tr["cold_mean_bytes"]) / tr["cold_mean_bytes"]
        rt = tr["rate_pct_per_min"]
        rate_err = abs(t.rate_pct_per_min - rt) / rt if rt else t.rate_pct_per_min
        worst_cold, worst_rate = max(worst_cold, cold_err), max(worst_rate, rate_err)
        rows.append({"k": t.rounds, "cold_mib": round(t.cold_mean_bytes / MiB, 3),
                     "cold_true_mib": round(tr["cold_mean_bytes"] / MiB, 3), "rate": round(t.rate_pct_per_min, 3),
                     "rate_true": round(rt, 3)})
    k = got.advice.advised.rounds if got.advice.advised else None
    end_true = group_truth(shapes, k, got.windows, nrounds)["cold_end_bytes"] if k else None
    return {"worst_cold": worst_cold, "worst_rate": worst_rate, "rows": rows, "advised": k,
            "cold_end_true_bytes": end_true}
