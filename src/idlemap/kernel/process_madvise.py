"""pidfd_open(2) and process_madvise(2): advise the kernel about another
process's memory (MADV_COLD: deactivate; MADV_PAGEOUT: reclaim now).

Both are called by number (kernel/syscalls.py says why).  process_madvise needs Linux 5.10+, CAP_SYS_NICE and the
right to ptrace-read the target (PTRACE_MODE_READ_FSCREDS).

A pidfd pins the process *identity*: if the PID is reused, calls on the old
pidfd fail with ESRCH instead of advising the stranger.
"""
from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import NoSuchProcess
from . import syscalls

MADV_COLD = 20                 # Linux 5.4: move to the inactive list
MADV_PAGEOUT = 21              # Linux 5.4: reclaim (swap out / drop) now
ADVICE = {"cold": MADV_COLD, "pageout": MADV_PAGEOUT}

# UIO_MAXIOV: the kernel refuses more iovecs than this in one call (EINVAL).
IOV_MAX = 1024


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (close it with os.close)."""
    fd = syscalls.libc.syscall(syscalls.number("pidfd_open"), ctypes.c_int(pid), ctypes.c_uint(0))
    if fd < 0:
        e = ctypes.get_errno()
        if e == errno.ESRCH:
            raise NoSuchProcess(pid)        # not there to begin with
        syscalls.raise_for("pidfd_open", e, pid, f"PID {pid}")
        raise OSError(e, os.strerror(e))
    return int(fd)


@dataclass
class AdviseResult:
    """What one process_madvise pass did: bytes the kernel accepted, and the
    ranges it refused (start, length, errno name) -- e.g. unmapped since."""
    advised_bytes: int = 0
    calls: int = 0
    failed: list[tuple[int, int, str]] = field(default_factory=list)


def _call(pidfd: int, iov: np.ndarray, advice: int) -> int:
    """One syscall over iov (n x 2 uint64: base, len); bytes or -errno."""
    n = syscalls.libc.syscall(syscalls.number("process_madvise"), ctypes.c_int(pidfd), ctypes.c_void_p(iov.ctypes.data),
                      ctypes.c_size_t(iov.shape[0]), ctypes.c_int(advice), ctypes.c_uint(0))
    return int(n) if n >= 0 else -ctypes.get_errno()


def process_madvise(pidfd: int, pid: int, starts: np.ndarray, lengths: np.ndarray,
                    advice: int) -> AdviseResult:
    """Advise every [start, start+length) range of the process behind ``pidfd``.

    Ranges go IOV_MAX per syscall.  The kernel stops at the first range it
    refuses and returns the bytes done before it (mm/madvise.c), so after a
    short count the refused range is retried alone to learn its errno, then
    the pass continues after it.
    """
    iov = np.empty((len(starts), 2), dtype=np.uint64)
    iov[:, 0] = np.asarray(starts, dtype=np.uint64)
    iov[:, 1] = np.asarray(lengths, dtype=np.uint64)
    res = AdviseResult()
    i = 0
    while i < iov.shape[0]:
        chunk = np.ascontiguousarray(iov[i:i + IOV_MAX])
        n = _call(pidfd, chunk, advice)
        res.calls += 1
        if n < 0:
            _raise_fatal(-n, pid)
            res.failed.append((int(chunk[0, 0]), int(chunk[0, 1]), "-" + errno.errorcode.get(-n, str(-n))))
            i += 1
            continue
        res.advised_bytes += n
        done = np.cumsum(chunk[:, 1].astype(np.int64))
        if n >= int(done[-1]):
            i += chunk.shape[0]
            continue
        # Ranges fully done, then the one that stopped the kernel.
        i += int(np.searchsorted(done, n, side="right"))
    return res


def _raise_fatal(e: int, pid: int) -> None:
    """Errors that concern the whole call, not one range."""
    syscalls.raise_for("process_madvise", e, pid, f"the memory of PID {pid}")
