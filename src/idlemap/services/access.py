"""Who may open a process's files under ``idlemap mount``: the rules of
/proc/PID/pagemap, decided as a pure function of plain data.

The kernel opens pagemap with mm_access(task, PTRACE_MODE_READ_FSCREDS),
i.e. __ptrace_may_access() (kernel/ptrace.c):
  1. a thread of the same process may always read;
  2. otherwise the caller's fsuid must equal the target's real, effective
     and saved uid, and its fsgid the real, effective and saved gid -- or the
     caller has CAP_SYS_PTRACE;
  3. a target that is not dumpable (setuid exec, PR_SET_DUMPABLE 0) needs
     CAP_SYS_PTRACE;
  4. then the LSMs.  Yama restricts only PTRACE_MODE_ATTACH in the kernel,
     so pagemap itself ignores kernel.yama.ptrace_scope.  The daemon reads
     with root's power on the caller's behalf, so we apply Yama too (the
     stricter reading): scope 1 -- the caller must be an ancestor of the
     target; scope 2 and 3 -- only callers with CAP_SYS_PTRACE.  Exceptions
     a target grants with prctl(PR_SET_PTRACER) are invisible from outside
     and are not honoured.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kernel.creds import Creds


@dataclass(frozen=True, slots=True)
class Caller:
    """The process behind a FUSE request: fsuid/fsgid from the request
    context; tgid and CapEff from its /proc/PID/status when readable."""
    uid: int
    gid: int
    tgid: int = -1                # -1: unknown (the caller already exited, or another PID namespace)
    cap_sys_ptrace: bool | None = None   # None: unknown -> uid 0 counts as having it


@dataclass(frozen=True, slots=True)
class Target:
    creds: Creds
    dumpable: bool
    ancestors: tuple[int, ...] = ()   # parent, grandparent... (needed for Yama scope 1 only)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


def may_read(caller: Caller, target: Target, yama_scope: int | None = None) -> Decision:
    t = target.creds
    if caller.tgid > 0 and caller.tgid == t.tgid:
        return Decision(True, "the caller is the target process")
    cap = caller.cap_sys_ptrace if caller.cap_sys_ptrace is not None else caller.uid == 0
    same_ids = (all(u == caller.uid for u in t.uids[:3]) and all(g == caller.gid for g in t.gids[:3]))
    if not same_ids and not cap:
        return Decision(False, f"uid {caller.uid}/gid {caller.gid} does not own process {t.pid} "
                               f"(uids {t.uids[0]},{t.uids[1]},{t.uids[2]}) and lacks CAP_SYS_PTRACE")
    if not target.dumpable and not cap:
        return Decision(False, f"process {t.pid} is not dumpable (setuid program or "
                               "PR_SET_DUMPABLE 0); only CAP_SYS_PTRACE may read it")
    if yama_scope and not cap:
        if yama_scope >= 2:
            return Decision(False, f"kernel.yama.ptrace_scope={yama_scope}: only CAP_SYS_PTRACE may read")
        if caller.tgid <= 0 or caller.tgid not in target.ancestors:
            return Decision(False, "kernel.yama.ptrace_scope=1: the caller is not an ancestor "
                                   f"of process {t.pid}")
    if cap and not same_ids:
        return Decision(True, "the caller has CAP_SYS_PTRACE")
    return Decision(True, "same user, and the target may be traced")
