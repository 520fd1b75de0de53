"""/proc/PID/stat and friends: who a PID is, so PID reuse can be noticed."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import NoSuchProcess, PidReused, TargetExited, proc_errors
from .tasks import parse_stat


@dataclass(frozen=True, slots=True)
class ProcessId:
    pid: int
    start_ticks: int       # field 22 of /proc/PID/stat: unique with the PID
    comm: str
    uid: int

    @property
    def is_kernel_thread(self) -> bool:
        return _is_kthread(self.pid)


def _read_stat(pid: int) -> tuple[str, list[str]]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return parse_stat(f.read().decode("utf-8", "replace"))


def identify(pid: int) -> ProcessId:
    if pid <= 0:
        raise NoSuchProcess(pid)
    with proc_errors(pid, "the status"):
        comm, rest = _read_stat(pid)
        uid = os.stat(f"/proc/{pid}").st_uid
    # rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    return ProcessId(pid, int(rest[19]), comm, uid)


def check_same(proc: ProcessId) -> None:
    """Raise TargetExited / PidReused unless the PID is still the same process."""
    try:
        comm, rest = _read_stat(proc.pid)
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExited(proc.pid) from None
    if int(rest[19]) != proc.start_ticks:
        raise PidReused(proc.pid)
    if rest[0] in ("Z", "X"):
        raise TargetExited(proc.pid)


def check_alive(proc: ProcessId) -> None:
    """check_same, and also TargetExited once the process's memory is gone.

    An exiting task releases its mm (exit_mm) before it becomes a zombie, so
    for a moment it is still "running" with no memory: its maps read empty
    and its pagemap all holes.  /proc/PID/statm then says size 0, which no
    live user process has (fs/proc/array.c prints zeros without an mm)."""
    check_same(proc)
    try:
        with open(f"/proc/{proc.pid}/statm", "rb") as f:
            size = int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExited(proc.pid) from None
    except (OSError, ValueError, IndexError):
        return                  # unreadable here: check_same's answer stands
    if size == 0:
        raise TargetExited(proc.pid)


def fault_counts(pid: int) -> tuple[int, int]:
    """(minor, major) page faults of the process so far (stat fields 10
    and 12).  A major fault is a page brought back from swap or disk: the
    kernel's own count of what a reclaim cost the target."""
    with proc_errors(pid, "the status"):
        _, rest = _read_stat(pid)
    return int(rest[7]), int(rest[9])


def resident_pages(pid: int) -> int:
    """Resident pages of the process now (/proc/PID/statm, field 2): one
    small read, cheaper than any smaps."""
    with proc_errors(pid, "statm"):
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1])


def _is_kthread(pid: int) -> bool:
    # Kernel threads have no mm: their maps are empty and cmdline is empty;
    # PF_KTHREAD (0x00200000) in the flags field (9) is the exact test.
    try:
        _, rest = _read_stat(pid)
        return bool(int(rest[6]) & 0x00200000)
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def list_pids() -> list[int]:
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
