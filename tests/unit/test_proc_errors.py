"""errors.proc_errors tells apart, as psutil does, a process that is gone,
a zombie, a /proc file this kernel does not have, and a denied read."""
from __future__ import annotations

import errno
import os

import pytest

from idlemap.errors import (AccessDenied, FeatureMissing, NoSuchProcess, TargetExited, Zombie,
                            proc_errors)


def _free_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def _raise_in(pid, exc):
    with proc_errors(pid, "the memory map"):
        raise exc


def test_gone_process():
    pid = _free_pid()
    with pytest.raises(NoSuchProcess) as e:
        _raise_in(pid, FileNotFoundError(errno.ENOENT, "No such file", f"/proc/{pid}/maps"))
    assert type(e.value) is NoSuchProcess and str(e.value) == f"no process with PID {pid}"


def test_file_this_kernel_lacks():
    pid = os.getpid()
    with pytest.raises(FeatureMissing) as e:
        _raise_in(pid, FileNotFoundError(errno.ENOENT, "No such file", f"/proc/{pid}/smaps_rollup_none"))
    assert "/proc/PID/smaps_rollup_none" in str(e.value)


def test_file_we_have_but_it_lost_means_it_went_away():
    pid = os.getpid()
    with pytest.raises(NoSuchProcess):
        _raise_in(pid, FileNotFoundError(errno.ENOENT, "No such file", f"/proc/{pid}/maps"))


def test_denied_and_exited_while_alive():
    pid = os.getpid()
    with pytest.raises(AccessDenied):
        _raise_in(pid, PermissionError(errno.EACCES, "denied"))
    with pytest.raises(TargetExited) as e:
        _raise_in(pid, ProcessLookupError(errno.ESRCH, "gone"))
    assert type(e.value) is TargetExited


def test_zombie():
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)      # exited, not reaped: a zombie
        for exc in (FileNotFoundError(errno.ENOENT, "No such file", f"/proc/{child}/maps"),
                    ProcessLookupError(errno.ESRCH, "gone"), PermissionError(errno.EPERM, "denied"),
                    OSError(errno.ESRCH, "gone")):
            with pytest.raises(Zombie) as e:
                _raise_in(child, exc)
            assert "zombie" in str(e.value) and isinstance(e.value, TargetExited)
    finally:
        os.waitpid(child, 0)


def test_check_alive_reads_a_missing_mm_as_exited():
    """An exiting task has released its memory before it is a zombie: its
    statm says size 0.  A kernel thread (no mm, never a zombie) shows the
    same on this real kernel; a live process does not."""
    from idlemap.kernel.process import check_alive, identify
    check_alive(identify(os.getpid()))
    with open("/proc/2/stat") as f:
        if "(kthreadd)" not in f.read():
            pytest.skip("PID 2 is not kthreadd here (a PID namespace)")
    with pytest.raises(TargetExited):
        check_alive(identify(2))
