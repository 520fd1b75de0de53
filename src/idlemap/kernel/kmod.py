"""/dev/idlemap: idlemap's own kernel module (kmod/, docs/kmod.md), thin.

The module walks one process's page tables by virtual address: the RFC's
/proc/PID/idle_bitmap without frames, rmap or page_idle, and it flushes the
TLB after clearing accessed bits.  Here: open the device, bind it to a
process, and the three operations (RFC pread/pwrite, the one-walk ioctl),
with errno turned into idlemap errors.  Also load/unload by system call
(finit_module / delete_module), so no kmod package is needed.

The numbers are kmod/idlemap.h's, spelt once in kmod_abi.py.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

import numpy as np

from ..errors import (AccessDenied, FeatureMissing, IdlemapError, NoSuchProcess, OsFailure, TargetExited, TryLater,
                      Unavailable, UsageError)
from . import syscalls

from .kmod_abi import (API_VERSION, DEVICE, IOC_BIND, IOC_MAPS_SIG, IOC_SET_MODE, IOC_VERSION,  # noqa: F401
                       IOC_WALK, MODE_IDLE, MODE_PRESENT, MODE_REMARK, MODULE, REBUILD, WALK_CLEAR,
                       WALK_NOFLUSH)
from .kmod_abi import WALK as _WALK

NOT_LOADED = "the idlemap kernel module is not loaded (`idlemap kmod build` then `idlemap kmod load`)"


def loaded() -> bool:
    return os.path.isdir(f"/sys/module/{MODULE}")


def available() -> bool:
    """The device exists (the module is loaded); opening it still needs root."""
    return os.path.exists(DEVICE)


class Device:
    """One open /dev/idlemap bound to one process.

    The module holds the process's ``struct pid``, so after ``bind`` a PID
    reused by another process is never read: operations then fail with
    ESRCH (:class:`TargetExited`).  Bind first, then compare /proc/PID/stat
    with what you identified (``process.check_same``) to close the window
    before the bind.
    """

    def __init__(self, pid: int | None = None):
        try:
            self.fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Unavailable(NOT_LOADED) from None
        except PermissionError:
            raise AccessDenied(DEVICE, "it needs root (CAP_SYS_ADMIN)") from None
        self.pid = 0
        try:
            v = fcntl.ioctl(self.fd, IOC_VERSION)
            if v != API_VERSION:
                raise Unavailable(f"the loaded idlemap module speaks interface version {v}, this idlemap "
                                   f"speaks {API_VERSION}: rebuild and reload it ({REBUILD})")
            if pid is not None:
                self.bind(pid)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _err(self, e: OSError) -> IdlemapError | OSError:
        if e.errno == errno.ESRCH:
            return TargetExited(self.pid)
        if e.errno == errno.EBADFD:
            return UsageError("the /dev/idlemap file is not bound to a process")
        return e

    def bind(self, pid: int) -> None:
        try:
            fcntl.ioctl(self.fd, IOC_BIND, pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise NoSuchProcess(pid) from None
            if e.errno == errno.EINVAL:
                raise UsageError(f"PID {pid} has no user memory (a kernel thread)") from None
            raise
        self.pid = pid

    def set_mode(self, mode: int) -> None:
        fcntl.ioctl(self.fd, IOC_SET_MODE, mode)

    def maps_signature(self) -> int:
        """A 64-bit signature of the bound process's memory map (every VMA's
        range, flags, offset and backing, keyed-hashed by the module): equal
        to an earlier one only while /proc/PID/maps would list the same
        mappings, so a reader re-reads the maps only when it changed."""
        buf = bytearray(8)
        try:
            fcntl.ioctl(self.fd, IOC_MAPS_SIG, buf, True)
        except OSError as e:
            raise self._err(e) from None
        return int.from_bytes(buf, "little")

    # -- the RFC file interface ------------------------------------------------
    def pread(self, nbytes: int, offset: int) -> bytes:
        try:
            return os.pread(self.fd, nbytes, offset)
        except OSError as e:
            raise self._err(e) from None

    def pwrite(self, data: bytes, offset: int) -> int:
        try:
            return os.pwrite(self.fd, data, offset)
        except OSError as e:
            raise self._err(e) from None

    # -- one walk, every bitmap ---------------------------------------------------
    def walk(self, start: int, end: int, idle: np.ndarray | None = None, present: np.ndarray | None = None,
             huge: np.ndarray | None = None, swapped: np.ndarray | None = None,
             clear: bool = False, defer_flush: bool = False) -> tuple[int, int]:
        """Walk [start, end) once; fill the given bitmaps (uint64 arrays of at
        least ceil(pages/64) words, bit i = page start + i pages); with
        ``clear`` also clear the accessed bits tested (mark idle) and flush
        the TLB; with ``defer_flush`` too, leave that flush to the next call
        on this device that does not defer (or close): one flush for a read
        made of several walks.  Loops over the module's bounded calls.
        Returns (present pages, idle pages)."""
        return self.walk_at(start, end, bitmap_addresses((end - start) >> PAGE_SHIFT,
                                                         (idle, present, huge, swapped)),
                            walk_flags(clear, defer_flush))

    def walk_at(self, start: int, end: int, ptrs: tuple[int, int, int, int], flags: int) -> tuple[int, int]:
        """``walk`` on bitmaps already checked and given by address
        (``bitmap_addresses``; 0: not wanted) and flags (``walk_flags``).
        The path of every steady read: under TCG the checks and the numpy
        attribute look-ups cost ~100 us a call, more than the module's own
        per-call work (~35 us), and a read makes several calls."""
        if start >= end:
            return 0, 0
        arg = bytearray(_WALK.size)
        total_present = total_idle = 0
        pos = start
        cur = ptrs
        while True:
            _WALK.pack_into(arg, 0, pos, end, *cur, flags, 0, 0, 0, 0)
            try:
                fcntl.ioctl(self.fd, IOC_WALK, arg, True)
            except OSError as e:
                raise self._err(e) from None
            nxt, n_present, n_idle = _WALK_OUT.unpack_from(arg, _WALK_OUT_AT)
            total_present += n_present
            total_idle += n_idle
            if nxt >= end:
                return total_present, total_idle
            if nxt <= pos:              # cannot happen: the module always advances
                raise IdlemapError("the idlemap module made no progress")
            pos = nxt
            adv = ((pos - start) >> PAGE_SHIFT) // 8          # bytes into the bitmaps
            cur = tuple(p + adv if p else 0 for p in ptrs)

    def walk_many(self, walks, clear: bool = False) -> tuple[int, int]:
        """Several walks as one reading: ``walk_at`` for each ``(start, end,
        ptrs)`` in order; with ``clear``, one TLB flush for all of them, paid
        at the last (every walk before it defers its own; the module pays a
        deferred flush on any error or other call).  Returns the summed
        (present pages, idle pages)."""
        flags = (walk_flags(clear, defer_flush=True), walk_flags(clear))
        last = len(walks) - 1
        total_present = total_idle = 0
        for k, (start, end, ptrs) in enumerate(walks):
            p, i = self.walk_at(start, end, ptrs, flags[k == last])
            total_present += p
            total_idle += i
        return total_present, total_idle


# walk_at's bitmap addresses when none is wanted: the walk only counts
NO_BITMAPS = (0, 0, 0, 0)


def walk_flags(clear: bool, defer_flush: bool = False) -> int:
    """struct idlemap_walk's flags: ``defer_flush`` only means something with ``clear``."""
    return (WALK_CLEAR | (WALK_NOFLUSH if defer_flush else 0)) if clear else 0


def bitmap_addresses(npages: int, bufs) -> tuple[int, int, int, int]:
    """The addresses of a walk's four bitmaps (idle, present, huge, swapped;
    None: not wanted, 0), each checked to hold ``npages`` bits: the module
    writes whole words up to round_up(npages, 64)."""
    for b in bufs:
        if b is not None and (b.dtype != np.uint64 or b.size * 64 < npages or not b.flags.c_contiguous):
            raise ValueError("bitmaps must be contiguous uint64 arrays of ceil(pages/64) words")
    return tuple(b.ctypes.data if b is not None else 0 for b in bufs)      # type: ignore[return-value]


# struct idlemap_walk's outputs (next, nr_present, nr_idle): its last three u64
_WALK_OUT = struct.Struct("=3Q")
_WALK_OUT_AT = _WALK.size - _WALK_OUT.size


PAGE_SHIFT = os.sysconf("SC_PAGE_SIZE").bit_length() - 1


# -- loading and unloading, by system call ------------------------------------------


def load(path: str) -> None:
    """finit_module(2) the .ko at ``path``; each refusal is one sentence."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        r = syscalls.libc.syscall(syscalls.number("finit_module"), fd, b"", 0)
        err = ctypes.get_errno() if r != 0 else 0
    finally:
        os.close(fd)
    if err:
        raise load_error(err, path)


def load_error(err: int, path: str) -> IdlemapError:
    if err == errno.EEXIST:
        return UsageError("the idlemap module is already loaded (`idlemap kmod status`)")
    if err == errno.EPERM:
        why = refusal_reason()
        return AccessDenied(f"loading {path}", why or "loading modules needs root (CAP_SYS_MODULE)")
    if err == errno.EKEYREJECTED or err == errno.ENOKEY:
        return Unavailable("the kernel refused the module's signature: Secure Boot or "
                            "CONFIG_MODULE_SIG_FORCE require modules signed with an enrolled key")
    if err == errno.ENOEXEC:
        return Unavailable(f"{path} was not built for this kernel ({os.uname().release}): "
                            "rebuild it with `idlemap kmod build`")
    return OsFailure(f"loading {path} failed: {os.strerror(err)} (see `dmesg`)")


def refusal_reason() -> str:
    """Why this kernel refuses every module, or '' (read-only probes)."""
    try:
        with open("/proc/sys/kernel/modules_disabled") as f:
            if f.read().strip() == "1":
                return "module loading is disabled until reboot (/proc/sys/kernel/modules_disabled is 1)"
    except OSError:
        pass
    try:
        with open("/sys/kernel/security/lockdown") as f:
            text = f.read()
        if "[none]" not in text and "[" in text:
            mode = text[text.index("[") + 1:text.index("]")]
            return (f"the kernel is locked down ({mode}; /sys/kernel/security/lockdown), "
                    "which refuses unsigned modules (Secure Boot)")
    except OSError:
        pass
    return ""


def unload() -> None:
    if not loaded():
        raise UsageError("the idlemap module is not loaded")
    r = syscalls.libc.syscall(syscalls.number("delete_module"), MODULE.encode(), os.O_NONBLOCK)
    if r != 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            raise UsageError("the idlemap module is not loaded")
        if err == errno.EWOULDBLOCK or err == errno.EBUSY:
            raise TryLater("the idlemap module is in use (a /dev/idlemap file is open): close it first")
        if err == errno.ENOSYS:
            raise FeatureMissing("module unloading", "CONFIG_MODULE_UNLOAD")
        if err == errno.EPERM:
            raise AccessDenied(f"unloading {MODULE}", "unloading modules needs root (CAP_SYS_MODULE)")
        raise OsFailure(f"unloading {MODULE} failed: {os.strerror(err)}")
