"""Syscalls idlemap makes through libc's syscall(), and one errno table for
the ones aimed at another process.

glibc wraps pidfd_open only since 2.36 and process_madvise not at all in
older releases, move_pages and mbind live in libnuma, and finit_module /
delete_module have no wrapper: they are called by number.  The numbers differ between architectures: x86_64 has its own table
(arch/x86/entry/syscalls/syscall_64.tbl), aarch64 the generic one
(include/uapi/asm-generic/unistd.h).  On any other machine :func:`number`
refuses in one sentence instead of issuing a number that means another
syscall there.
"""
from __future__ import annotations

import ctypes
import errno
import platform

from ..errors import AccessDenied, FeatureMissing, IdlemapError, TargetExited

NUMBERS = {
    "x86_64": {"move_pages": 279, "pidfd_open": 434, "process_madvise": 440,
               "mbind": 237, "finit_module": 313, "delete_module": 176},
    "aarch64": {"move_pages": 239, "pidfd_open": 434, "process_madvise": 440,
                "mbind": 235, "finit_module": 273, "delete_module": 106},
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
MACHINE = _ALIASES.get(platform.machine(), platform.machine())

# What each call needs of the kernel, and what to do instead.
REQUIRES = {
    "move_pages": ("CONFIG_MIGRATION", ""),
    "pidfd_open": ("Linux 5.3+", ""),
    "process_madvise": ("CONFIG_ADVISE_SYSCALLS, Linux 5.10+", "use `--dry-run` to see the plan"),
}

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


# glibc's mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HOLD_BYTES = 64 << 20


def hold_freed_memory() -> bool:
    """Have malloc keep up to HOLD_BYTES of freed memory for reuse instead
    of handing it back to the kernel at once; the idlemap program calls it
    at start, and the benchmarks do as it does.  A steady read allocates
    and frees arrays of a bit or a byte per page every window -- hundreds
    of KiB for a Python-sized target -- and glibc's defaults return such
    blocks to the kernel (munmap, or trimming the heap's top past twice the
    last freed block), so every read paid a page fault per 4 KiB of them
    again: measured under TCG, a kmod read's per-page arrays took 2.4 ms
    instead of 0.7 ms (docs/kmod.md).  Blocks past 32 MiB still get their
    own mapping.  False where libc has no mallopt (not glibc)."""
    fn = getattr(libc, "mallopt", None)
    if fn is None:
        return False
    return bool(fn(M_MMAP_THRESHOLD, 32 << 20)) and bool(fn(M_TRIM_THRESHOLD, HOLD_BYTES))


class UnknownSyscall(FeatureMissing):
    """idlemap does not know the call's number on this architecture."""

    def __init__(self, name: str, machine: str):
        self.feature = name
        self.config = ""
        IdlemapError.__init__(self, f"idlemap does not know the {name} syscall number on {machine or 'this machine'} "
                                    f"(it knows {' and '.join(NUMBERS)})")


def number(name: str, machine: str = MACHINE) -> int:
    table = NUMBERS.get(machine)
    if table is None or name not in table:
        raise UnknownSyscall(name, machine)
    return table[name]


def raise_for(call: str, e: int, pid: int, what: str) -> None:
    """Raise the idlemap error for an errno that concerns the whole call on
    process ``pid`` (``what``: "the pages of PID 42", for the sentence);
    return for any other errno, which the caller interprets."""
    if e in (errno.ESRCH, errno.EBADF):          # gone since it was identified (EBADF: its pidfd)
        raise TargetExited(pid)
    if e == errno.EPERM:
        raise AccessDenied(f"{what} for {call}",
                           "it needs CAP_SYS_NICE and the right to ptrace the target: run as root")
    if e == errno.ENOSYS:
        config, instead = REQUIRES[call]
        raise FeatureMissing(call, config, instead)
