"""/proc/PID/status credentials and the Yama ptrace policy, read as data.

Who may read a process's page-level data is decided in
``idlemap.services.access``; this module only reads and decodes what that
decision needs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

YAMA_PATH = "/proc/sys/kernel/yama/ptrace_scope"
CAP_SYS_PTRACE = 19      # include/uapi/linux/capability.h


@dataclass(frozen=True, slots=True)
class Creds:
    """The fields of /proc/PID/status that ptrace_may_access() looks at."""
    pid: int
    tgid: int
    ppid: int
    uids: tuple[int, int, int, int]     # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    cap_eff: int

    @property
    def has_cap_sys_ptrace(self) -> bool:
        return bool(self.cap_eff >> CAP_SYS_PTRACE & 1)


def parse_status(pid: int, text: str) -> Creds:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value.strip()

    def ids(name: str) -> tuple[int, int, int, int]:
        vals = [int(v) for v in fields[name].split()]
        return (vals[0], vals[1], vals[2], vals[3])

    return Creds(pid=pid, tgid=int(fields.get("Tgid", pid)), ppid=int(fields.get("PPid", 0)),
                 uids=ids("Uid"), gids=ids("Gid"), cap_eff=int(fields.get("CapEff", "0"), 16))


def read_creds(pid: int) -> Creds:
    """Raises OSError (ENOENT/ESRCH) if the process is gone."""
    with open(f"/proc/{pid}/status", "rb") as f:
        return parse_status(pid, f.read().decode("utf-8", "replace"))


def proc_owner(pid: int) -> tuple[int, int]:
    """Owner of the files in /proc/PID/: the task's euid/egid while it is
    dumpable, root:root once it is not (setuid exec, PR_SET_DUMPABLE 0, or
    credentials changed without exec).  procfs derives it in
    task_dump_owner(), which is how dumpability shows from outside.  (The
    /proc/PID directory itself keeps the euid: task_dump_owner exempts it.)"""
    st = os.stat(f"/proc/{pid}/status")
    return st.st_uid, st.st_gid


def ancestors(pid: int, limit: int = 4096) -> tuple[int, ...]:
    """PIDs of the parent, grandparent, ... up to init (as far as readable)."""
    out: list[int] = []
    cur = pid
    while len(out) < limit:
        try:
            ppid = read_creds(cur).ppid
        except (OSError, KeyError, ValueError):
            break
        if ppid <= 0:
            break
        out.append(ppid)
        cur = ppid
    return tuple(out)


def yama_ptrace_scope() -> int | None:
    """kernel.yama.ptrace_scope (0-3), or None without Yama."""
    try:
        with open(YAMA_PATH) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def user_ns(pid: int | str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the process's user namespace; None when the
    kernel has no user namespaces (CONFIG_USER_NS off: no /proc/PID/ns/user,
    so every process is in the initial one).  Raises OSError if the
    process is gone or the file cannot be read."""
    try:
        st = os.stat(f"/proc/{pid}/ns/user")
    except FileNotFoundError:
        if os.path.isdir(f"/proc/{pid}"):
            return None
        raise
    return st.st_dev, st.st_ino
