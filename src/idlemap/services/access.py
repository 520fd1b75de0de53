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

Per-page idle data (idle_bitmap, idle_pages, wss with page_idle) needs more:
the kernel keeps page_idle root-only (a 0600 root file) and shows frame
numbers in pagemap only to CAP_SYS_ADMIN in the initial user namespace,
because a page's accessed state is shared by every process that maps the
frame (a file's page cache): marking and reading the frames of one's own
mapping of a shared file tells which pages *other* users touched, and
clears the accessed bits in their page tables.  ``may_read_frames`` grants
it only to callers that could do it themselves: the checks above, plus
CAP_SYS_ADMIN and (fsuid 0 or CAP_DAC_OVERRIDE), verified from the
caller's own /proc/PID/status in the daemon's user namespace.  Anything
that cannot be verified counts as unprivileged (fail closed).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..kernel.creds import Creds


CAP_DAC_OVERRIDE = 1
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21           # include/uapi/linux/capability.h


@dataclass(frozen=True, slots=True)
class Caller:
    """The process behind a FUSE request: fsuid/fsgid from the request
    context; tgid and CapEff from its /proc/PID/status when readable."""
    uid: int
    gid: int
    tgid: int = -1                # -1: unknown (the caller already exited, or another PID namespace)
    cap_sys_ptrace: bool | None = None   # None: unknown -> not held (fail closed, even for uid 0)
    # Set only when the request's PID was found, its status showed the
    # request's fsuid/fsgid (the same process, not a reused PID) and it is
    # in the daemon's user namespace (capabilities in a child namespace
    # are worth nothing outside it).  None: not verified.
    cap_eff: int | None = None

    @property
    def verified(self) -> bool:
        return self.cap_eff is not None

    def has(self, cap: int) -> bool:
        return self.cap_eff is not None and bool(self.cap_eff >> cap & 1)


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
    cap = bool(caller.cap_sys_ptrace)
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


def may_read_frames(caller: Caller, target: Target, yama_scope: int | None = None) -> Decision:
    """May the caller have per-page idle data of the target (page_idle
    marks and reads)?  Only if it could read the target's pagemap with
    frame numbers and open page_idle itself (see the module's doc)."""
    d = may_read(caller, target, yama_scope)
    if not d.allowed:
        return d
    if not caller.verified:
        return Decision(False, "per-page idle data needs CAP_SYS_ADMIN and the caller's "
                               "capabilities could not be verified (its PID is not visible to "
                               "the daemon, it changed credentials, or it is in another user namespace)")
    if not caller.has(CAP_SYS_ADMIN):
        return Decision(False, f"per-page idle data is root-only, as the kernel keeps page_idle and "
                               f"page frames: uid {caller.uid} lacks CAP_SYS_ADMIN")
    if caller.uid != 0 and not caller.has(CAP_DAC_OVERRIDE):
        return Decision(False, f"per-page idle data is root-only: uid {caller.uid} could not open "
                               "/sys/kernel/mm/page_idle/bitmap (0600 root) itself: no CAP_DAC_OVERRIDE")
    return Decision(True, f"{d.reason}; CAP_SYS_ADMIN for page frames and page_idle")
