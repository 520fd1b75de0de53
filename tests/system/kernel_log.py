"""The kernel log as the kmod tests watch it: records since a point
(/dev/kmsg), and which of them are splats.

On the debug kernel (KASAN, PROVE_LOCKING, DEBUG_VM, DEBUG_ATOMIC_SLEEP,
DEBUG_LIST) the checkers report through these lines; on the plain kernels
the same patterns catch BUG_ON/WARN_ON and oopses.  A test fails if any
record logged while it ran matches.
"""
from __future__ import annotations

import errno
import os
import re

# One pattern per kind of report, as the 6.1 kernel prints its first line.
SPLAT = re.compile("|".join([
    r"\bBUG:",                       # BUG: KASAN: ..., BUG: sleeping function called from
                                     # invalid context, BUG: Bad page state, soft lockup...
    r"\bWARNING:",                   # WARN_ON, and lockdep's "WARNING: possible circular
                                     # locking dependency detected" / "... recursive locking"
    r"kernel BUG at",                # BUG_ON / VM_BUG_ON
    r"\bOops\b",
    r"general protection fault",
    r"Unable to handle",
    r"KASAN",                        # (case matters: the boot line says "kasan:")
    r"possible circular locking",
    r"possible recursive locking",
    r"inconsistent lock state",
    r"suspicious RCU usage",
    r"sleeping function called from invalid context",
    r"DEBUG_LOCKS_WARN_ON",
    r"list_(add|del) corruption",
    r"Bad page (state|map)",
    r"detected stall",               # rcu: INFO: rcu_sched detected stalls / self-detected stall
    r"blocked for more than",        # a hung task
    r"Call Trace:",                  # any other stack dump
]))


def splats(lines: list[str]) -> list[str]:
    return [ln for ln in lines if SPLAT.search(ln)]


def _records(fd: int) -> list[str]:
    out = []
    while True:
        try:
            rec = os.read(fd, 8192)
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno == errno.EPIPE:      # records overwritten meanwhile: keep reading
                continue
            raise
        if not rec:
            break
        out.append(rec.decode("utf-8", "replace").split(";", 1)[-1].strip())
    return out


class Kmsg:
    """New kernel log records since creation (/dev/kmsg, from its end)."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> list[str]:
        try:
            return _records(self.fd)
        finally:
            os.close(self.fd)


def since_boot() -> list[str]:
    """Every record still in the log buffer."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return _records(fd)
    finally:
        os.close(fd)


def lockdep_on() -> bool | None:
    """Whether lockdep still validates (it turns itself off after its first
    report, or after any taint by a BUG); None without PROVE_LOCKING."""
    try:
        with open("/proc/lockdep_stats") as f:
            for line in f:
                if line.split(":")[0].strip() == "debug_locks":
                    return int(line.split(":")[1]) == 1
    except OSError:
        return None
    return None
