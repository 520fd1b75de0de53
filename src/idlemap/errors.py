"""idlemap's errors, and the one place that turns errno into them.

Every error a user can cause or meet (a PID that does not exist, no
permission, a kernel without a feature) becomes an :class:`IdlemapError`
whose ``str()`` is one sentence fit to print; ``cli.main`` is the only place
that turns them into exit codes.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


class IdlemapError(Exception):
    """Base class: the message is one sentence for the user."""

    exit_code = 1


class NoSuchProcess(IdlemapError):
    def __init__(self, pid: int, detail: str = ""):
        self.pid = pid
        super().__init__(f"no process with PID {pid}{detail}")


class TargetExited(NoSuchProcess):
    """The target was there when we started and went away mid-scan."""

    def __init__(self, pid: int):
        IdlemapError.__init__(self, f"process {pid} exited during the scan")
        self.pid = pid


class Zombie(TargetExited):
    """The process has exited but its parent has not reaped it: /proc/PID
    is still there, its memory is not."""

    def __init__(self, pid: int):
        IdlemapError.__init__(self, f"process {pid} has exited and is a zombie (its parent has not reaped "
                                    "it yet): it has no memory left to measure")
        self.pid = pid


class PidReused(NoSuchProcess):
    def __init__(self, pid: int):
        IdlemapError.__init__(
            self, f"PID {pid} now belongs to a different process (it exited and the PID was reused)")
        self.pid = pid


class AccessDenied(IdlemapError):
    exit_code = 77

    def __init__(self, what: str, hint: str = "run as root"):
        super().__init__(f"permission denied reading {what} ({hint})")


class FeatureMissing(IdlemapError):
    """The kernel lacks what was asked for; says which CONFIG_ and what else works."""

    exit_code = 69

    def __init__(self, feature: str, config: str, alternative: str = ""):
        self.feature = feature
        self.config = config
        msg = f"this kernel has no {feature} ({config} is not set)"
        if alternative:
            msg += f"; {alternative}"
        super().__init__(msg)


class UsageError(IdlemapError):
    exit_code = 2


class BlindToGuest(IdlemapError):
    """An action (reclaim, tier) would act on readings blind to the
    target's KVM guest; EX_UNAVAILABLE, as a missing feature."""

    exit_code = 69


class Unavailable(IdlemapError):
    """Something a command needs is not here and waiting will not bring it:
    a library, idlemap's module, headers or a compiler (EX_UNAVAILABLE, as
    FeatureMissing, whose sentence is about a kernel option)."""

    exit_code = 69


class TryLater(IdlemapError):
    """Busy now; the same command can work later (EX_TEMPFAIL)."""

    exit_code = 75


class OsFailure(IdlemapError):
    """An operating-system error nothing more specific covers; the sentence
    names it.  The exit code of an OSError that reaches cli.main."""

    exit_code = 74


class BadInput(IdlemapError):
    exit_code = 65


class KernelThread(UsageError):
    """A kernel thread has no user memory: every command refuses it alike."""

    def __init__(self, pid: int, comm: str = ""):
        self.pid = pid
        name = f" ({comm})" if comm else ""
        super().__init__(f"PID {pid}{name} is a kernel thread: it has no user memory to measure")


class WriteDenied(AccessDenied):
    """No permission to create or replace an output file (exit 77 like any permission error)."""

    def __init__(self, msg: str):
        IdlemapError.__init__(self, msg)


class CannotWrite(IdlemapError):
    """An output could not be created or written: read-only file system,
    full device, I/O error.  73 is sysexits' EX_CANTCREAT."""

    exit_code = 73


# The exit-code table (README "Exit codes"); cli.main is the only place
# that returns these.  Kept here as data so the README and tests can be
# checked against one list.
EXIT_CODES = {
    0: "success",
    1: "the target process does not exist, exited during the run, or its PID was reused",
    2: "usage: a bad option, value, path or target (a kernel thread; not a VMM for --vm; a NUMA node "
       "the target may not use)",
    65: "bad input data: a record file that is missing, corrupt, not a record, or without the rounds a "
        "report needs; a module file that is not a kernel module; a QMP socket that does not answer as QEMU's",
    69: "unavailable: the kernel lacks a feature, or idlemap's module, a library, a build tool or the "
        "memory the command needs is not there (waiting will not help)",
    70: "internal error in idlemap (a bug: please report it)",
    73: "cannot create or write an output file (read-only file system, no space)",
    74: "an operating-system error nothing above covers (the sentence names it)",
    75: "temporary failure: try again later (DAMON busy with another user, the module in use, another "
        "tool using the target's soft-dirty bits)",
    77: "permission denied",
    125: "the test VM could not run the command",
    130: "interrupted by Ctrl-C or SIGTERM (what was gathered is still printed or kept)",
}


# What provides each /proc/PID file idlemap reads, for the sentence when a
# kernel has none (fs/proc/base.c, fs/proc/task_mmu.c).
PROC_FILE_CONFIG = {
    "pagemap": "CONFIG_PROC_PAGE_MONITOR",
    "smaps": "CONFIG_PROC_PAGE_MONITOR",
    "smaps_rollup": "CONFIG_PROC_PAGE_MONITOR, Linux 4.14+",
    "clear_refs": "CONFIG_PROC_PAGE_MONITOR",
    "numa_maps": "CONFIG_NUMA",
}


def _proc_state(pid) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, Z...); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        return None


def _missing_file(pid, exc: FileNotFoundError) -> IdlemapError:
    """Why a /proc/PID file was not there, asked as psutil does: the
    process is gone (no /proc/PID), a zombie, or alive and this kernel
    has no such file (it is missing from /proc/self too)."""
    if not os.path.exists(f"/proc/{pid}"):
        return NoSuchProcess(pid)
    if _proc_state(pid) == "Z":
        return Zombie(pid)
    prefix = f"/proc/{pid}/"
    path = exc.filename if isinstance(exc.filename, str) else ""
    if path.startswith(prefix) and not os.path.exists("/proc/self/" + path[len(prefix):]):
        name = path[len(prefix):]
        return FeatureMissing(f"/proc/PID/{name}", PROC_FILE_CONFIG.get(name, "the option that provides it"))
    # Present for us but not for it: it went away between the two looks
    # (reaped, and the PID already taken again).
    return NoSuchProcess(pid)


@contextlib.contextmanager
def proc_errors(pid: int, what: str) -> Iterator[None]:
    """Translate OSErrors raised while touching /proc/PID/* into idlemap errors.

    /proc files of a process that has exited give ENOENT on open and ESRCH on
    read (the mm is gone); a zombie gives 0 bytes, handled by the callers.
    Before blaming the process, the errno is checked against what /proc says
    now (psutil's order): gone, zombie, a file this kernel lacks, denied.
    """
    try:
        yield
    except FileNotFoundError as e:
        raise _missing_file(pid, e) from None
    except ProcessLookupError:
        raise (Zombie(pid) if _proc_state(pid) == "Z" else TargetExited(pid)) from None
    except PermissionError:
        if _proc_state(pid) == "Z":
            raise Zombie(pid) from None
        raise AccessDenied(f"{what} of PID {pid}",
                           "run as root, or as the process's owner where ptrace is allowed") from None
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise (Zombie(pid) if _proc_state(pid) == "Z" else TargetExited(pid)) from None
        if e.errno == errno.EACCES or e.errno == errno.EPERM:
            if _proc_state(pid) == "Z":
                raise Zombie(pid) from None
            raise AccessDenied(f"{what} of PID {pid}") from None
        raise


class VmError(IdlemapError):
    """The test VM could not run a command: no qemu, no kernel, the VM died.

    125 is what `docker run` returns when docker itself fails, so it is not
    confused with the command's own exit status.
    """

    exit_code = 125
