"""/proc/PID/clear_refs: reset the referenced/accessed state of a process.

Values (Documentation/filesystems/proc.rst): 1 all pages, 2 anon, 3 file,
4 soft-dirty bits (CONFIG_MEM_SOFT_DIRTY), 5 peak RSS.
"""
from __future__ import annotations

from ..errors import proc_errors

CLEAR_ALL = 1
CLEAR_ANON = 2
CLEAR_FILE = 3
CLEAR_SOFT_DIRTY = 4
CLEAR_PEAK_RSS = 5


def clear_refs(pid: int, value: int = CLEAR_ALL) -> None:
    with proc_errors(pid, "clear_refs"):
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write(str(value))
