"""Every process on the system: /proc/PID/stat and /proc/PID/cgroup.

One pass over /proc gives, per process, what system-wide scans need to tell
processes apart across rounds (PID + start time, so a reused PID is a new
process), to skip kernel threads (no mm), to walk process trees (ppid) and to
group by cgroup v2.  Processes vanish at any moment: a file that is gone
simply drops that process from the answer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

PF_KTHREAD = 0x00200000


@dataclass(frozen=True, slots=True)
class TaskInfo:
    pid: int
    ppid: int
    comm: str
    state: str              # R, S, D, Z, ...
    start_ticks: int        # field 22 of stat: with the PID, names one process for life
    kthread: bool           # PF_KTHREAD: no user memory to scan

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


def parse_stat(data: str) -> tuple[str, list[str]]:
    """/proc/PID/stat text -> (comm, fields from field 3 on).  comm sits in
    parentheses and may itself contain ") ", hence the last parenthesis."""
    lp, rp = data.index("("), data.rindex(")")
    return data[lp + 1:rp], data[rp + 2:].split()


def read_task(pid: int) -> TaskInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:          # gone (ENOENT/ESRCH) or hidden: not ours to report
        return None
    try:
        comm, rest = parse_stat(data)
        # rest[0] is field 3 (state): ppid is field 4, flags 9, starttime 22.
        return TaskInfo(pid, int(rest[1]), comm, rest[0], int(rest[19]),
                        bool(int(rest[6]) & PF_KTHREAD))
    except (ValueError, IndexError):
        return None


def list_tasks() -> list[TaskInfo]:
    """Every process (thread-group leader) visible in /proc, sorted by PID."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            t = read_task(int(d))
            if t is not None:
                out.append(t)
    out.sort(key=lambda t: t.pid)
    return out


def parse_cgroup(text: str) -> str:
    """The cgroup v2 path ("0::/path" line) of /proc/PID/cgroup, or "" when
    the process is in no v2 hierarchy (a pure cgroup v1 system)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return ""


def read_cgroup(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            return parse_cgroup(f.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def descendants(tasks: list[TaskInfo], roots: set[int]) -> set[int]:
    """PIDs of ``roots`` and every process below them (by ppid)."""
    children: dict[int, list[int]] = {}
    for t in tasks:
        children.setdefault(t.ppid, []).append(t.pid)
    present = {t.pid for t in tasks}
    out = set()
    todo = [r for r in roots if r in present]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, ()))
    return out
