"""`idlemap mount` with page_idle, in the test VM (Linux 6.1 with
CONFIG_IDLE_PAGE_TRACKING): the RFC's files, used the way RFC-era tools
would, against ground truth from a workload whose touched pages are known.

Timing-free: the workload touches exactly the pages it is told to and
acknowledges; the C tool marks, then waits for a line on stdin before it
reads.  The mount runs with --tlb-flush soft-dirty so that a page touched
after the mark cannot hide behind a cached translation (docs/tlb.md).
"""
from __future__ import annotations

import errno
import mmap
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from idlemap.formats import idle_pages as ip
from idlemap.bitmap import IdleBitmap
from idlemap.kernel import page_idle
from idlemap.testing.workload import Workload
from mounthelp import (UNPRIV, ExecTarget, Mount, Users, as_user, check_as, check_with,
                       hold_across_exec, needs_pyfuse3, word_range)

# Skipped per test with the reason, never silently as a whole module: in the
# VM a skip of a vm test is a failure (tests/conftest.py).
pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not page_idle.available(), reason="needs CONFIG_IDLE_PAGE_TRACKING "
                                 "(page_idle): runs in the test VM"),
              pytest.mark.skipif(os.geteuid() != 0, reason="idlemap mount needs root"),
              needs_pyfuse3]

PAGE = 4096
FILE_BYTES = 1 << 32

# An RFC-era tool: open, pwrite all-ones over a range, wait, pread the same
# range, print the words.  Also probes the RFC's EINVAL/EOF rules.
RFC_TOOL_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) { fprintf(stderr, "usage: %s IDLE_BITMAP START LEN\n", argv[0]); return 2; }
    unsigned long start = strtoul(argv[2], NULL, 0), len = strtoul(argv[3], NULL, 0);
    off_t off = (off_t)(start / 4096 / 64 * 8);
    size_t nbytes = (len / 4096 + 63) / 64 * 8;
    uint64_t *buf = malloc(nbytes);
    char line[64];
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) { perror("open"); return 3; }
    memset(buf, 0xff, nbytes);
    if (pwrite(fd, buf, nbytes, off) != (ssize_t)nbytes) { perror("pwrite"); return 4; }
    printf("marked\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 5;
    memset(buf, 0, nbytes);
    if (pread(fd, buf, nbytes, off) != (ssize_t)nbytes) { perror("pread"); return 6; }
    for (size_t i = 0; i < nbytes / 8; i++)
        printf("%016llx\n", (unsigned long long)buf[i]);
    ssize_t r;
    errno = 0;
    r = pread(fd, buf, 8, off + 4);
    printf("misaligned_offset %zd %d\n", r, errno);
    errno = 0;
    r = pread(fd, buf, 12, off);
    printf("misaligned_size %zd %d\n", r, errno);
    errno = 0;
    r = pread(fd, buf, 64, (off_t)1 << 32);
    printf("past_end %zd %d\n", r, errno);
    close(fd);
    return 0;
}
"""


@pytest.fixture(scope="module")
def mount():
    m = Mount("--allow-other", "--tlb-flush", "soft-dirty")
    assert m.info["backend"] == "page_idle", m.info
    yield m
    rc = m.stop()
    print(m.log_text())           # the daemon's own account, shown if teardown fails or with -s
    assert rc == 0
    assert not os.path.ismount(m.dir)
    m.cleanup()


@pytest.fixture(scope="module")
def rfc_tool():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tempfile.mkdtemp()
    src, exe = os.path.join(d, "rfc_tool.c"), os.path.join(d, "rfc_tool")
    with open(src, "w") as f:
        f.write(RFC_TOOL_C)
    subprocess.run([cc, "-O1", "-Wall", "-Werror", "-o", exe, src], check=True)
    yield exe
    shutil.rmtree(d)


def python_api_words(pid: int, lo: int, hi: int) -> np.ndarray:
    with IdleBitmap(pid) as bm:
        return bm.read([(lo, hi)]).rfc_words(lo, hi)[0]


def test_rfc_tool_matches_python_api_and_truth(mount, rfc_tool):
    with Workload() as w:
        addr = w.map("a", 16, "nothp")
        npages = 16 << 20 >> 12
        w.touch("a", 1)                                  # fault every page in
        off, size, lo = word_range(addr, 16 << 20)
        tool = subprocess.Popen([rfc_tool, mount.path(w.pid, "idle_bitmap"), hex(lo), str(size * 8 * PAGE)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert tool.stdout.readline().strip() == "marked"
        w.touch("a", 4)                                  # pages 0, 4, 8, ...
        w.touch("a", 1, 1001, 100)                       # and 1001..1100
        out, _ = tool.communicate("go\n", timeout=300)
        assert tool.returncode == 0
        lines = out.splitlines()
        words = np.array([int(x, 16) for x in lines[:size // 8]], dtype=np.uint64)
        probes = {k: (int(a), int(b)) for k, a, b in (ln.split() for ln in lines[size // 8:])}
        # The same bits as the Python API ...
        api = python_api_words(w.pid, lo, lo + size * 8 * PAGE)
        assert np.array_equal(words, api)
        # ... and as the truth: accessed = touched after the mark.
        bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
        first = (addr - lo) >> 12
        touched = np.zeros(npages, dtype=bool)
        touched[::4] = True
        touched[1001:1101] = True
        assert np.array_equal(bits[first:first + npages], ~touched)
        # The RFC's rules, seen from C.
        assert probes["misaligned_offset"] == (-1, errno.EINVAL)
        assert probes["misaligned_size"] == (-1, errno.EINVAL)
        assert probes["past_end"] == (0, 0)


def test_idle_bitmap_rules(mount):
    with Workload() as w:
        addr = w.map("a", 1, "nothp")
        w.touch("a", 1)
        fd = os.open(mount.path(w.pid, "idle_bitmap"), os.O_RDWR)
        try:
            off, size, lo = word_range(addr, 1 << 20)
            for o, s in ((off + 4, 8), (off, 12)):
                with pytest.raises(OSError) as e:
                    os.pread(fd, s, o)
                assert e.value.errno == errno.EINVAL
                with pytest.raises(OSError) as e:
                    os.pwrite(fd, b"\xff" * s, o)
                assert e.value.errno == errno.EINVAL
            assert os.pread(fd, 64, FILE_BYTES) == b""
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"\xff" * 8, FILE_BYTES)
            assert e.value.errno == errno.ENXIO
            # Unmapped space reads idle (the RFC's holes), cheaply.
            assert os.pread(fd, 1 << 20, 1 << 20) == b"\xff" * (1 << 20)
            # Writing zeros marks nothing; all-ones then reading: everything idle.
            assert os.pwrite(fd, bytes(size), off) == size
            assert os.pwrite(fd, b"\xff" * size, off) == size
            words = np.frombuffer(os.pread(fd, size, off), dtype=np.uint64)
            bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
            first = (addr - lo) >> 12
            assert bits[first:first + 256].all()          # the mapping's 256 pages (other pages
                                                          # in its words belong to neighbours)
            with open(mount.path(w.pid, "wss")) as f:
                kv = dict(x.split("=", 1) for x in f.read().split())
            assert kv["backend"] == "page_idle" and float(kv["window_s"]) >= 0
        finally:
            os.close(fd)


def test_exited_process_gives_esrch(mount):
    w = Workload()
    try:
        addr = w.map("a", 1, "nothp")
        w.touch("a", 1)
        off, size, _ = word_range(addr, 1 << 20)
        fd = os.open(mount.path(w.pid, "idle_bitmap"), os.O_RDWR)
        fd2 = os.open(mount.path(w.pid, "idle_pages"), os.O_RDONLY)
        assert len(os.pread(fd, size, off)) == size
        w.proc.kill()
        w.proc.wait()
        for call in (lambda: os.pread(fd, size, off), lambda: os.pwrite(fd, b"\xff" * size, off),
                     lambda: os.pread(fd2, 4096, 0)):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.ESRCH
        os.close(fd)
        os.close(fd2)
    finally:
        w.kill()


def test_idle_pages_decodes_to_the_bitmap_with_thp(mount):
    with Workload() as w:
        t = w.map("t", 8, "thp")                         # four 2 MiB THPs (2 MiB aligned)
        s = w.map("s", 4, "nothp")
        w.touch("t", 1)
        w.touch("s", 1)
        ranges = [word_range(t, 8 << 20), word_range(s, 4 << 20)]
        fd = os.open(mount.path(w.pid, "idle_bitmap"), os.O_RDWR)
        try:
            for off, size, _ in ranges:
                os.pwrite(fd, b"\xff" * size, off)       # mark both mappings idle
            w.touch("t", 1, 700, 1)                      # in THP 1 (pages 512..1023)
            w.touch("t", 1, 1536 + 3, 1)                 # in THP 3
            w.touch("s", 5)                              # 4K pages 0, 5, 10, ...
            stream = bytearray()
            pfd = os.open(mount.path(w.pid, "idle_pages"), os.O_RDONLY)
            try:
                reads = 0
                while True:
                    chunk = os.read(pfd, 256)            # small reads: cut and continued many times
                    if not chunk:
                        break
                    assert chunk[0] == ip.SET_VA and len(chunk) <= 256
                    stream += chunk
                    reads += 1
            finally:
                os.close(pfd)
            assert reads > 1
            ext = ip.decode(stream)
            for off, size, lo in ranges:
                hi = lo + size * 8 * PAGE
                idle_words = np.frombuffer(os.pread(fd, size, off), dtype=np.uint64)
                with open(mount.path(w.pid, "present_bitmap"), "rb") as pf:
                    pf.seek(off)
                    present_words = np.frombuffer(pf.read(size), dtype=np.uint64)
                got_idle, got_present = ip.to_bitmaps(ext, lo, hi)
                assert np.array_equal(got_idle, idle_words)
                assert np.array_equal(got_present, present_words)
        finally:
            os.close(fd)
        # The THP mapping came out as 2 MiB extents: THPs 1 and 3 accessed, 0 and 2 idle.
        in_t = (ext.va >= np.uint64(t)) & (ext.va < np.uint64(t + (8 << 20)))
        kinds = [(ip.TYPE_NAMES[k], int(c)) for k, c in zip(ext.kind[in_t], ext.count[in_t])]
        assert kinds == [("PMD_IDLE", 1), ("PMD_ACCESSED", 1), ("PMD_IDLE", 1), ("PMD_ACCESSED", 1)]
        in_s = (ext.va >= np.uint64(s)) & (ext.va < np.uint64(s + (4 << 20)))
        assert set(ext.kind[in_s].tolist()) == {ip.PTE_ACCESSED, ip.PTE_IDLE}


def test_access_rules_idle_bitmap(mount):
    """Per-page idle data is root-only, as page_idle is in the kernel: an
    unprivileged user gets none, not even of its own processes; the present
    bitmap follows pagemap's ptrace rules."""
    u = Users()
    try:
        n = "idle_bitmap"
        got = check_as(Users.A, mount.dir, [(u.root.pid, n), (u.b.pid, n), (u.a.pid, n),
                                            (u.nondumpable.pid, n), ("SELF", n), (u.a.pid, "idle_pages"),
                                            (u.a.pid, "wss"), (u.a.pid, "present_bitmap"),
                                            ("SELF", "present_bitmap")])
        assert got == {f"{u.root.pid}/{n}": "EACCES", f"{u.b.pid}/{n}": "EACCES", f"{u.a.pid}/{n}": "EACCES",
                       f"{u.nondumpable.pid}/{n}": "EACCES", f"SELF/{n}": "EACCES",
                       f"{u.a.pid}/idle_pages": "EACCES", f"{u.a.pid}/wss": "EACCES",
                       f"{u.a.pid}/present_bitmap": "ok", "SELF/present_bitmap": "ok"}
        assert "lacks CAP_SYS_ADMIN" in mount.log_text()
        for p in (u.root, u.a, u.b, u.nondumpable):
            fd = os.open(mount.path(p.pid, n), os.O_RDONLY)
            try:
                assert len(os.pread(fd, 64, 0)) == 64
            finally:
                os.close(fd)
    finally:
        u.close()


@pytest.fixture
def shared_file():
    """A world-readable 8 MiB file (2048 pages) in a directory everyone can reach."""
    d = tempfile.mkdtemp(prefix="idlemap-shared-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "data")
    with open(path, "wb") as f:
        f.write(b"\x5a" * (8 << 20))
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d)


def run_probe(progs, mount, shared_file, uid):
    """The audit's attack: the probe (a C program run as ``uid``) maps the
    file read-only and tries the mount's files of its own process; while its
    mark is in place, this process (root's) touches the first half of the
    same file through its own mapping.  Returns {name: line fields} and, under
    "root_present", how many pages of each half are present in root's own
    mapping: the pages with a young PTE since the mark (those root touched,
    plus the neighbours the kernel's fault-around mapped young with them)."""
    with open(shared_file, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        probe = subprocess.Popen([progs.probe, mount.dir, shared_file], cwd="/", stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **as_user(uid))
        lines = []
        for line in probe.stdout:
            lines.append(line)
            if line.strip() == "marked":
                npages = len(m) // PAGE
                for i in range(npages // 2):          # root's accesses: the first half only
                    m[i * PAGE]
                break
        rest, err = probe.communicate("go\n", timeout=300)
        root_present = present_halves(shared_file, len(m) // PAGE)
    finally:
        m.close()
    assert probe.returncode == 0, (lines, rest, err)
    out = {"root_present": root_present}
    for line in lines + rest.splitlines():
        parts = line.split()
        if parts and "=" in line:
            out.setdefault(parts[0], []).append(dict(x.split("=", 1) for x in parts[1:] if "=" in x))
    return out


def present_halves(path: str, npages: int) -> tuple[int, int]:
    """Pages of each half of ``path`` present in this process's mapping of it."""
    from idlemap.kernel import pagemap as pm
    with open("/proc/self/maps") as f:
        start = next(int(ln.split("-")[0], 16) for ln in f if ln.rstrip().endswith(path))
    with pm.Pagemap(os.getpid()) as pmap:
        present = (pmap.read(start >> 12, npages) & pm.PRESENT) != 0
    return int(present[:npages // 2].sum()), int(present[npages // 2:].sum())


def test_unprivileged_user_learns_nothing_from_a_shared_file(mount, progs, shared_file):
    """uid 4242 maps root's world-readable file and tries to mark and read
    its own pages' idle bits (which would tell which pages root touched, and
    clear root's accessed bits): refused at open, nothing marked, 0 bits
    learned; only the present bitmap (what pagemap gives it) is served."""
    got = run_probe(progs, mount, shared_file, UNPRIV)
    assert [d["open"] for d in got["idle_bitmap"]] == [str(errno.EACCES)] * 2, got   # O_RDWR, O_RDONLY
    assert got["idle_pages"][0]["open"] == str(errno.EACCES), got
    assert got["wss"][0]["open"] == str(errno.EACCES), got
    assert "learned" not in got, got                                   # 0 bits learned
    assert got["present_bitmap"][0] == {"open": "0", "io": "0", "n": got["present_bitmap"][0]["n"],
                                        "present": str(2048)}, got
    print("uid 4242:", got)
    # And root's process (this one, which maps the file too): nothing at all.
    names = ["idle_bitmap", "idle_pages", "wss", "present_bitmap"]
    r = subprocess.run([progs.hold, mount.dir, str(os.getpid()), *names], input="go\n", cwd="/",
                       capture_output=True, text=True, timeout=120, **as_user(UNPRIV))
    assert r.returncode == 0, r.stderr
    opens = {ln.split()[1]: int(ln.split()[2]) for ln in r.stdout.splitlines() if ln.startswith("open ")}
    assert opens == {**{n: errno.EACCES for n in names}, "proc_maps": errno.EACCES,
                     "proc_pagemap": errno.EACCES}, r.stdout


def test_root_gets_exact_data_on_the_shared_file(mount, progs, shared_file):
    """The positive case of the test above: root (CAP_SYS_ADMIN, as page_idle
    itself requires) gets the exact answer -- the half root's other process
    touched reads accessed, the untouched half idle."""
    got = run_probe(progs, mount, shared_file, 0)
    assert all(d["open"] == "0" for name in ("idle_bitmap", "idle_pages", "wss", "present_bitmap")
               for d in got[name]), got
    learned = got["learned"][0]
    first, second = got["root_present"]
    assert first == 1024                          # root touched every page of the first half
    # Exact: accessed = what has a young PTE anywhere since the mark = root's
    # pages (the second half only where fault-around mapped a neighbour).
    assert (int(learned["first"]), int(learned["second"])) == (first, second), got
    print("root:", got)


@pytest.mark.parametrize("holder, setuid", [(UNPRIV, True), (UNPRIV, False), (0, True), (0, False)],
                         ids=["uid4242-setuid-exec", "uid4242-plain-exec", "root-setuid-exec",
                              "root-plain-exec"])
def test_open_file_stops_answering_after_exec(mount, progs, holder, setuid):
    """The audit's case: files of a uid-4242 process are opened (by uid 4242
    itself: what it may open; by root: every file), then the process executes
    a setuid-root program or a plain one.  The open descriptors must stop
    answering (EACCES), as /proc's own do (they read 0 bytes then); a fresh
    open is checked against the new image."""
    names = ["present_bitmap", "idle_pages", "idle_bitmap", "wss"]
    target = ExecTarget(UNPRIV, progs.setuid_waiter if setuid else progs.waiter)
    try:
        got = hold_across_exec(progs, mount.dir, holder, target, names)
    finally:
        target.close()
    assert got[("exec", "ids")] == ((UNPRIV, 0) if setuid else (UNPRIV, UNPRIV))
    served = names if holder == 0 else ["present_bitmap"]
    for name in names:
        if name in served:
            assert got[("before", name)][0] > 0, (name, got)
            assert got[("after", name)] == (-1, errno.EACCES), (name, got)
        else:                                   # per-page idle data: refused at open already
            assert got[("before", name)] == (-1, 0) and got[("after", name)] == (-1, 0), (name, got)
            assert got[("fresh", name)] == (-1, errno.EACCES), (name, got)
    assert got[("after", "proc_maps")] == (0, 0) and got[("after", "proc_pagemap")] == (0, 0), got
    for name in served + ["proc_maps"]:
        if holder == 0 or not setuid:
            assert got[("fresh", name)][0] > 0, (name, got)
        else:
            assert got[("fresh", name)] == (-1, errno.EACCES), (name, got)


def test_root_without_cap_sys_admin_gets_no_idle_data(mount):
    """uid 0 without CAP_SYS_ADMIN (a container's root) could not use
    page_idle itself: refused the idle files, with page_idle really there;
    present_bitmap it keeps (CAP_SYS_PTRACE).  Full root: every file."""
    u = Users()
    try:
        targets = [(u.a.pid, "idle_bitmap"), (u.a.pid, "idle_pages"), (u.a.pid, "wss"),
                   (u.a.pid, "present_bitmap")]
        got = check_with(["setpriv", "--bounding-set=-sys_admin", "--"], mount.dir, targets)
        assert got == {f"{u.a.pid}/idle_bitmap": "EACCES", f"{u.a.pid}/idle_pages": "EACCES",
                       f"{u.a.pid}/wss": "EACCES", f"{u.a.pid}/present_bitmap": "ok"}
        assert set(check_with([], mount.dir, targets).values()) == {"ok"}
    finally:
        u.close()


def test_mark_after_exec_is_refused(mount, progs):
    """Writes are bound too: root's idle_bitmap descriptor marks the checked
    image, and after an exec its writes fail with EACCES (nothing marked in
    the new image)."""
    target = ExecTarget(UNPRIV, progs.setuid_waiter)
    try:
        fd = os.open(mount.path(target.pid, "idle_bitmap"), os.O_RDWR)
        try:
            assert os.pwrite(fd, b"\xff" * 4096, 0) == 4096
            assert target.exec_now() == (UNPRIV, 0)
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"\xff" * 4096, 0)
            assert e.value.errno == errno.EACCES
            with pytest.raises(OSError) as e:
                os.pread(fd, 4096, 0)
            assert e.value.errno == errno.EACCES
        finally:
            os.close(fd)
        fd = os.open(mount.path(target.pid, "idle_bitmap"), os.O_RDWR)     # root, afresh: fine
        try:
            assert os.pwrite(fd, b"\xff" * 4096, 0) == 4096
        finally:
            os.close(fd)
    finally:
        target.close()
