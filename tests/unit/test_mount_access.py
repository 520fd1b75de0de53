"""Who may open DIR/<pid>/* under idlemap mount: pagemap's rules, as data."""
from __future__ import annotations

import pytest

from idlemap.kernel.creds import Creds, parse_status
from idlemap.services.access import Caller, Target, may_read, may_read_frames

STATUS = """\
Name:\tsleep
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Ngid:\t0
Pid:\t4243
PPid:\t4000
TracerPid:\t0
Uid:\t1000\t1000\t1000\t1000
Gid:\t100\t100\t100\t100
FDSize:\t64
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000080000
"""


def creds(pid=500, uids=(1000,) * 4, gids=(100,) * 4, tgid=None, cap=0):
    return Creds(pid, tgid or pid, 1, uids, gids, cap)


def test_parse_status():
    c = parse_status(4243, STATUS)
    assert (c.tgid, c.ppid, c.uids, c.gids) == (4242, 4000, (1000,) * 4, (100,) * 4)
    assert c.has_cap_sys_ptrace        # bit 19 of CapEff


USER = Caller(uid=1000, gid=100, tgid=600, cap_sys_ptrace=False)
ROOT = Caller(uid=0, gid=0, tgid=1, cap_sys_ptrace=True)


@pytest.mark.parametrize("caller, target, scope, allowed, why", [
    (USER, Target(creds(), True), None, True, "same user"),
    (ROOT, Target(creds(), True), None, True, "CAP_SYS_PTRACE"),
    (ROOT, Target(creds(uids=(0,) * 4, gids=(0,) * 4), True), None, True, ""),
    (USER, Target(creds(uids=(0,) * 4, gids=(0,) * 4), True), None, False, "does not own"),
    (USER, Target(creds(uids=(1001,) * 4), True), None, False, "does not own"),
    # setuid-style: saved uid differs -> not the same credentials
    (USER, Target(creds(uids=(1000, 1000, 0, 1000)), True), None, False, "does not own"),
    (USER, Target(creds(gids=(100, 100, 5, 100)), True), None, False, "does not own"),
    (USER, Target(creds(), False), None, False, "not dumpable"),
    (ROOT, Target(creds(), False), None, True, ""),
    # its own process: always, even when not dumpable or under Yama 3
    (USER, Target(creds(pid=600), False), 3, True, "is the target"),
    # Yama 1: only an ancestor
    (USER, Target(creds(), True, ancestors=(550, 1)), 1, False, "not an ancestor"),
    (USER, Target(creds(), True, ancestors=(600, 1)), 1, True, ""),
    (USER, Target(creds(), True, ancestors=(600, 1)), 2, False, "ptrace_scope=2"),
    (ROOT, Target(creds(), True), 2, True, ""),
    (USER, Target(creds(), True), 0, True, ""),
    # root without CAP_SYS_PTRACE (dropped) is just uid 0
    (Caller(0, 0, 7, cap_sys_ptrace=False), Target(creds(), True), None, False, "does not own"),
    # unknown caller details (PID not visible, status unreadable): no
    # capability, even for uid 0 -- fail closed
    (Caller(0, 0), Target(creds(), True), None, False, "lacks CAP_SYS_PTRACE"),
    (Caller(1000, 100), Target(creds(), True, ancestors=(600,)), 1, False, "not an ancestor"),
])
def test_may_read(caller, target, scope, allowed, why):
    d = may_read(caller, target, scope)
    assert d.allowed is allowed
    assert why in d.reason


# Per-page idle data (page_idle): root-only, as in the kernel.
ALL_CAPS = (1 << 41) - 1
ADMIN = Caller(0, 0, tgid=1, cap_sys_ptrace=True, cap_eff=ALL_CAPS)
USER_SELF = Caller(1000, 100, tgid=500, cap_sys_ptrace=False, cap_eff=0)


@pytest.mark.parametrize("caller, target, allowed, why", [
    (ADMIN, Target(creds(), True), True, "CAP_SYS_ADMIN"),
    (ADMIN, Target(creds(uids=(0,) * 4, gids=(0,) * 4), False), True, ""),
    # an unprivileged user, even for its own process (the shared-file side
    # channel: its own mapping of a file other users touch)
    (USER_SELF, Target(creds(pid=500), True), False, "lacks CAP_SYS_ADMIN"),
    (USER_SELF, Target(creds(pid=501), True), False, "lacks CAP_SYS_ADMIN"),
    (USER_SELF, Target(creds(pid=501, uids=(0,) * 4, gids=(0,) * 4), True), False, "does not own"),
    # root whose capabilities could not be verified: refused
    (Caller(0, 0, tgid=1, cap_sys_ptrace=True), Target(creds(), True), False, "could not be verified"),
    (Caller(0, 0), Target(creds(), True), False, ""),
    # uid 0 without CAP_SYS_ADMIN (a container's root with dropped capabilities)
    (Caller(0, 0, 7, True, ALL_CAPS & ~(1 << 21)), Target(creds(), True), False, "lacks CAP_SYS_ADMIN"),
    # CAP_SYS_ADMIN without being uid 0 needs CAP_DAC_OVERRIDE to open page_idle
    (Caller(1000, 100, 500, True, 1 << 21 | 1 << 19), Target(creds(pid=500), True), False,
     "CAP_DAC_OVERRIDE"),
    (Caller(1000, 100, 500, True, 1 << 21 | 1 << 19 | 1 << 1), Target(creds(pid=500), True), True, ""),
    # a capable caller still needs the ptrace-read rules (Yama 2 without CAP_SYS_PTRACE)
    (Caller(1000, 100, 600, False, 1 << 21 | 1 << 1), Target(creds(), True), False, "ptrace_scope=2"),
])
def test_may_read_frames(caller, target, allowed, why):
    d = may_read_frames(caller, target, 2 if "ptrace_scope" in why else None)
    assert d.allowed is allowed
    assert why in d.reason


def test_image_binding_follows_exec_and_exit():
    """An open mount file's binding: answers for the checked image, EACCES
    once the process executed another program, ESRCH once it exited."""
    import errno
    import subprocess
    import time

    from idlemap.errors import NoSuchProcess
    from idlemap.kernel.process import identify
    from idlemap.services.procfiles import FileOpError, ImageBinding, errno_of, image_key

    p = subprocess.Popen(["/bin/sh", "-c", "read x; exec sleep 60"], stdin=subprocess.PIPE)
    try:
        b = ImageBinding(identify(p.pid))
        b.check()
        b.check()                                  # nothing changed: still answers
        p.stdin.write(b"go\n")
        p.stdin.flush()
        # Until sleep runs in place of sh, its image complete: comm changes
        # early in exec, the mm fields (start_code first) at the end of it.
        prev = None
        for _ in range(500):
            key = image_key(p.pid, b.proc.start_ticks)
            if key == prev and key[0] != 0 and key != b.key:
                break
            prev = key
            time.sleep(0.02)
        with pytest.raises(FileOpError) as e:
            b.check()
        assert e.value.errno == errno.EACCES and "executed a new program" in str(e.value)
        ImageBinding(identify(p.pid)).check()      # a fresh binding: the new image
        p.kill()
        p.wait()
        with pytest.raises(NoSuchProcess) as e2:
            b.check()
        assert errno_of(e2.value) == errno.ESRCH
        b.close()
    finally:
        p.kill()
        p.wait()
