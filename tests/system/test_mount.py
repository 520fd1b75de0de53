"""`idlemap mount` on the host kernel, for real: a FUSE mount served by the
CLI, read by this test and by processes of other users.

The host has no page_idle (CONFIG_IDLE_PAGE_TRACKING): here idle_bitmap and
idle_pages must refuse with EOPNOTSUPP and a log line naming the option;
present_bitmap (pagemap only), wss (clear_refs), the directory tree, the
RFC's offset rules and the access rules are all exercised for real.  The
page_idle files are tested in the VM (test_mount_vm.py).
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from idlemap.kernel import page_idle
from idlemap.testing.workload import Workload
from mounthelp import (UNPRIV, ExecTarget, Mount, Users, check_as, check_with, errno_name,
                       hold_across_exec, needs_pyfuse3, word_range)

# Skipped per test, with the reason, never silently as a whole module.
pytestmark = [pytest.mark.host,
              pytest.mark.skipif(os.geteuid() != 0, reason="idlemap mount needs root"),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse (CONFIG_FUSE_FS)"),
              needs_pyfuse3]

FILE_BYTES = 1 << 32


@pytest.fixture(scope="module")
def mount():
    m = Mount("--allow-other")
    yield m
    m.cleanup()


@pytest.fixture(scope="module")
def workload():
    with Workload() as w:
        w.map("a", 8, "nothp")
        w.touch("a", 3)                      # pages 0, 3, 6, ... present; the rest never faulted
        yield w


def test_tree_lists_user_processes(mount, workload):
    names = os.listdir(mount.dir)
    assert str(os.getpid()) in names and str(workload.pid) in names
    assert "2" not in names                  # kthreadd: no address space
    assert sorted(os.listdir(mount.path(workload.pid))) == ["idle_bitmap", "idle_pages",
                                                             "present_bitmap", "wss"]
    st = os.stat(mount.path(workload.pid, "idle_bitmap"))
    assert st.st_size == FILE_BYTES and st.st_mode & 0o777 == 0o600
    assert os.stat(mount.path(workload.pid, "present_bitmap")).st_mode & 0o777 == 0o400
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path(2**22 + 7))      # above pid_max: never a process


def test_present_bitmap_matches_touched_pages(mount, workload):
    addr = workload.addrs["a"]
    npages = 8 << 20 >> 12
    off, size, lo = word_range(addr, 8 << 20)
    fd = os.open(mount.path(workload.pid, "present_bitmap"), os.O_RDONLY)
    try:
        words = np.frombuffer(os.pread(fd, size, off), dtype=np.uint64)
    finally:
        os.close(fd)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
    first = (addr - lo) >> 12
    want = np.zeros(npages, dtype=bool)
    want[::3] = True
    assert np.array_equal(bits[first:first + npages], want)
    assert not bits[:first].any()           # before the mapping: unmapped, not present


def test_rfc_offset_rules(mount, workload):
    fd = os.open(mount.path(workload.pid, "present_bitmap"), os.O_RDONLY)
    try:
        for off, size in ((4, 8), (8, 12), (1, 1)):
            with pytest.raises(OSError) as e:
                os.pread(fd, size, off)
            assert e.value.errno == errno.EINVAL, (off, size)
        assert os.pread(fd, 64, FILE_BYTES) == b""          # past the top of user space
        assert len(os.pread(fd, 64, FILE_BYTES - 16)) == 16  # cut at the top
        # lseek like /proc files: anywhere with SEEK_SET, then read() from there
        assert os.lseek(fd, FILE_BYTES - 8, os.SEEK_SET) == FILE_BYTES - 8
        assert len(os.read(fd, 4096)) == 8 and os.read(fd, 4096) == b""
        assert os.lseek(fd, 1 << 40, os.SEEK_SET) == 1 << 40
        assert os.read(fd, 8) == b""
        # A large unmapped stretch is served cheaply and reads as not present.
        assert os.pread(fd, 1 << 20, 1 << 20) == bytes(1 << 20)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        os.open(mount.path(workload.pid, "present_bitmap"), os.O_WRONLY)
    assert e.value.errno == errno.EACCES


@pytest.mark.skipif(page_idle.available(), reason="this host has CONFIG_IDLE_PAGE_TRACKING; "
                    "the page_idle files are tested in the VM")
def test_idle_files_say_config_missing(mount, workload):
    for name in ("idle_bitmap", "idle_pages"):
        with pytest.raises(OSError) as e:
            with open(mount.path(workload.pid, name), "rb") as f:
                f.read(8)
        assert e.value.errno == errno.EOPNOTSUPP, name
    assert "CONFIG_IDLE_PAGE_TRACKING" in mount.log_text()


def test_wss_line(mount, workload):
    with open(mount.path(workload.pid, "wss")) as f:
        line = f.read()
    assert line.endswith("\n") and line.count("\n") == 1
    kv = dict(item.split("=", 1) for item in line.split())
    assert int(kv["pid"]) == workload.pid
    assert kv["backend"] in ("clear_refs", "page_idle")
    assert float(kv["rss_mb"]) >= (8 / 3)     # at least the touched third of the mapping


def test_exited_process_gives_esrch(mount):
    w = Workload()
    try:
        w.map("x", 1)
        w.touch("x", 1)
        fd = os.open(mount.path(w.pid, "present_bitmap"), os.O_RDONLY)
        off, size, _ = word_range(w.addrs["x"], 1 << 20)
        assert len(os.pread(fd, size, off)) == size
        w.proc.kill()
        os.waitid(os.P_PID, w.pid, os.WEXITED | os.WNOWAIT)   # a zombie now, not yet reaped
        with pytest.raises(OSError) as e:
            os.pread(fd, size, off)
        assert e.value.errno == errno.ESRCH
        w.proc.wait()                                         # reaped: gone from /proc
        with pytest.raises(OSError) as e:
            os.pread(fd, size, off)
        assert e.value.errno == errno.ESRCH
        os.close(fd)
        assert str(w.pid) not in os.listdir(mount.dir)
    finally:
        w.kill()


def test_access_rules_per_caller(mount):
    """With allow_other, each caller is checked like for /proc/PID/pagemap."""
    u = Users()
    try:
        name = "present_bitmap"
        targets = [(u.root.pid, name), (u.b.pid, name), (u.a.pid, name), (u.nondumpable.pid, name),
                   ("SELF", name), (u.a.pid, "wss")]
        got = check_as(Users.A, mount.dir, targets)
        assert got == {
            f"{u.root.pid}/{name}": "EACCES",          # root's process
            f"{u.b.pid}/{name}": "EACCES",             # another user's
            f"{u.a.pid}/{name}": "ok",                 # its own user's, dumpable: ptrace allowed
            f"{u.nondumpable.pid}/{name}": "EACCES",   # its own user's but not dumpable
            f"SELF/{name}": "ok",                      # itself (not dumpable, but the same process)
            f"{u.a.pid}/wss": "ok",
        }
        # root reads them all
        for p in (u.root, u.a, u.b, u.nondumpable):
            fd = os.open(mount.path(p.pid, name), os.O_RDONLY)
            try:
                assert len(os.pread(fd, 64, 0)) == 64
            finally:
                os.close(fd)
        assert "denied present_bitmap" in mount.log_text()
    finally:
        u.close()


@pytest.mark.parametrize("setuid", [True, False], ids=["setuid-exec", "plain-exec"])
def test_open_file_stops_answering_after_exec(mount, progs, setuid):
    """The audit's case: uid 4242 opens files of its own process, which then
    executes another program (a setuid-root one, or a plain one): the open
    descriptor must stop answering, as /proc's own descriptors do."""
    target = ExecTarget(UNPRIV, progs.setuid_waiter if setuid else progs.waiter)
    try:
        got = hold_across_exec(progs, mount.dir, UNPRIV, target, ["present_bitmap", "wss"])
    finally:
        target.close()
    assert got[("exec", "ids")] == ((UNPRIV, 0) if setuid else (UNPRIV, UNPRIV))
    for name in ("present_bitmap", "wss"):
        assert got[("before", name)][0] > 0, got                     # answered for the checked image
        assert got[("after", name)] == (-1, errno.EACCES), got       # bound to it: no more answers
    # What /proc does with the same descriptors: the mm it checked is gone, reads give 0 bytes;
    # a fresh open is checked against the new image.
    assert got[("before", "proc_maps")][0] > 0 and got[("after", "proc_maps")] == (0, 0), got
    if setuid:
        for name in ("present_bitmap", "wss", "proc_maps"):
            assert got[("fresh", name)] == (-1, errno.EACCES), got   # not dumpable, other euid
    else:
        for name in ("present_bitmap", "wss", "proc_maps"):
            assert got[("fresh", name)][0] > 0, got                  # still its own: open again
    assert "executed a new program" in mount.log_text()


def test_root_descriptor_is_bound_too(mount, progs):
    """Root's descriptors follow the same rule (EACCES after the exec); a
    fresh open gets the new image."""
    target = ExecTarget(UNPRIV, progs.setuid_waiter)
    try:
        got = hold_across_exec(progs, mount.dir, 0, target, ["present_bitmap", "wss"])
    finally:
        target.close()
    for name in ("present_bitmap", "wss"):
        assert got[("before", name)][0] > 0 and got[("after", name)] == (-1, errno.EACCES), got
        assert got[("fresh", name)][0] > 0, got


def test_capabilities_held_in_a_user_namespace_count_for_nothing(mount):
    """uid 4242 as root of its own user namespace (unshare -U -r: CapEff full
    there) is still uid 4242 to the mount: it reads neither root's nor
    another user's processes, and no per-page idle data."""
    u = Users()
    try:
        prefix = ["setpriv", f"--reuid={UNPRIV}", f"--regid={UNPRIV}", "--clear-groups",
                  "unshare", "--user", "--map-root-user"]
        got = check_with(prefix, mount.dir, [(u.root.pid, "present_bitmap"), (u.b.pid, "present_bitmap"),
                                             (u.root.pid, "idle_bitmap"), ("SELF", "idle_bitmap"),
                                             ("SELF", "present_bitmap")])
        if got is None:
            pytest.skip("unprivileged user namespaces are disabled on this host")
        assert got == {f"{u.root.pid}/present_bitmap": "EACCES", f"{u.b.pid}/present_bitmap": "EACCES",
                       f"{u.root.pid}/idle_bitmap": "EACCES", "SELF/idle_bitmap": "EACCES",
                       "SELF/present_bitmap": "ok"}
    finally:
        u.close()


def test_root_without_cap_sys_admin_gets_no_idle_data(mount):
    """uid 0 without CAP_SYS_ADMIN (a container's root) cannot use page_idle
    itself, so the mount refuses it the idle files; it keeps what
    CAP_SYS_PTRACE gives (present_bitmap of any process)."""
    u = Users()
    try:
        got = check_with(["setpriv", "--bounding-set=-sys_admin", "--"], mount.dir,
                         [(u.a.pid, "idle_bitmap"), (u.a.pid, "idle_pages"), (u.a.pid, "present_bitmap"),
                          (u.root.pid, "present_bitmap")])
        assert got == {f"{u.a.pid}/idle_bitmap": "EACCES", f"{u.a.pid}/idle_pages": "EACCES",
                       f"{u.a.pid}/present_bitmap": "ok", f"{u.root.pid}/present_bitmap": "ok"}
    finally:
        u.close()


def test_callers_the_daemon_cannot_see_get_no_capabilities():
    """A daemon in a child PID namespace gets PID 0 for callers outside it:
    their capabilities cannot be verified, so even root counts as an
    ordinary uid 0 there (fail closed): no idle files, and the present
    bitmap only of dumpable processes with its own ids."""
    # The daemon keeps the host's /proc (a private /proc would need a mount
    # namespace, hiding the FUSE mount from us); --tlb-flush none because the
    # auto policy probes the daemon's own pagemap by getpid(), which is 1 in
    # the new namespace and not the daemon in the host's /proc.
    m = Mount("--allow-other", "--tlb-flush", "none", prefix=("unshare", "--pid", "--kill-child=SIGTERM"))
    u = Users()
    try:
        got = {}
        for target, name in ((u.a.pid, "present_bitmap"), (u.root.pid, "present_bitmap"),
                             (u.root.pid, "idle_bitmap"), (u.root.pid, "wss")):
            try:
                with open(m.path(target, name), "rb") as f:
                    f.read(8)
                got[f"{'a' if target == u.a.pid else 'root'}/{name}"] = "ok"
            except OSError as e:
                got[f"{'a' if target == u.a.pid else 'root'}/{name}"] = errno_name(e)
        assert got == {"a/present_bitmap": "EACCES",      # another user's: needs CAP_SYS_PTRACE
                       "root/present_bitmap": "ok",       # root's own ids, dumpable
                       "root/idle_bitmap": "EACCES",      # refused before EOPNOTSUPP: no verified capability
                       "root/wss": "ok"}, m.log_text()    # clear_refs on this host: ptrace rules only
        assert "(pid 0)" in m.log_text()
    finally:
        u.close()
        assert m.stop() == 0
        m.cleanup()


def test_help_states_the_access_rules():
    r = subprocess.run([sys.executable, "-m", "idlemap", "mount", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    text = "".join(r.stdout.split())          # argparse wraps lines, also at hyphens
    assert "per-pageidledatastaysroot-only" in text and "afteranexecitanswersEACCES" in text


def test_exec_whose_old_mm_lives_on_is_caught(mount, progs):
    """A process sharing its mm with another (clone CLONE_VM, as vfork)
    executes a program: its old mm lives on in the other process, so /proc's
    descriptors keep reading it -- but the image of that PID changed, and
    the mount's descriptor stops answering."""
    p = subprocess.Popen([progs.clonevm, progs.waiter], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd="/")
    try:
        line = p.stdout.readline().split()
        assert line[0] == "child", line
        child = int(line[1])
        fd = os.open(mount.path(child, "present_bitmap"), os.O_RDONLY)
        pm = os.open(f"/proc/{child}/pagemap", os.O_RDONLY)
        try:
            assert len(os.pread(fd, 64, 0)) == 64
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().startswith("ruid ")       # the waiter runs in the child
            assert len(os.pread(pm, 64, 0)) == 64                 # /proc: the old mm, still alive
            with pytest.raises(OSError) as e:
                os.pread(fd, 64, 0)
            assert e.value.errno == errno.EACCES
        finally:
            os.close(fd)
            os.close(pm)
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def test_without_allow_other_only_root_gets_in():
    m = Mount()
    try:
        got = check_as(Users.A, m.dir, [("SELF", "present_bitmap")])
        assert got == {"SELF/present_bitmap": "EACCES"}     # the kernel's FUSE rule, before ours
    finally:
        m.cleanup()


def test_sigterm_unmounts_cleanly():
    m = Mount()
    try:
        assert os.path.ismount(m.dir)
        fd = os.open(m.path(os.getpid(), "present_bitmap"), os.O_RDONLY)   # open while stopping
        assert m.stop() == 0
        assert not os.path.ismount(m.dir)
        with pytest.raises(OSError) as e:
            os.pread(fd, 8, 0)
        assert errno_name(e.value) in ("ENOTCONN", "ENODEV", "ECONNABORTED")   # an error, not a hang
        try:
            os.close(fd)           # FUSE's flush on close reports the lost connection too
        except OSError:
            pass
        assert "unmounted" in m.log_text()
    finally:
        m.cleanup()
