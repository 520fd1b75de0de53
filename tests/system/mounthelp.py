"""Helpers for the tests of `idlemap mount` (host and VM): a real daemon
started through the real CLI, and callers with other credentials."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from idlemap.testing.child import end

WORD_VA = 64 * 4096

try:
    import pyfuse3  # noqa: F401 -- only whether the fuse extra is installed
    HAVE_PYFUSE3 = True
except ImportError:
    HAVE_PYFUSE3 = False

# Skipped per test with the reason, never silently as a whole module.
needs_pyfuse3 = pytest.mark.skipif(not HAVE_PYFUSE3, reason="the fuse extra (pyfuse3) is not installed")


class Mount:
    """``idlemap mount DIR --foreground --json`` in a child; ready when its
    first stdout line (the JSON 'mounted' record) arrives."""

    def __init__(self, *extra: str, prefix: tuple[str, ...] = ()):
        """``prefix``: a command that runs the daemon (e.g. unshare into
        another PID namespace); stop() then signals the daemon, its child."""
        self.prefix = prefix
        self.dir = tempfile.mkdtemp(prefix="idlemap-mnt-")
        os.chmod(self.dir, 0o755)          # other uids must reach the mount point
        self.log_path = self.dir + ".log"
        self.log = open(self.log_path, "w+")
        # faulthandler: should the daemon ever die of a signal, its log says where.
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "idlemap", "mount", self.dir, "--foreground", "--json", "-v", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"idlemap mount failed (rc {self.proc.returncode}): {self.log_text()}")
        self.info = json.loads(line)

    def path(self, pid: int, name: str = "") -> str:
        return os.path.join(self.dir, str(pid), name)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit status; the mount must be gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.prefix:
                # unshare --fork ignores SIGTERM while it waits for its child.
                try:
                    with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                        for child in f.read().split():
                            os.kill(int(child), signal.SIGTERM)
                except OSError:
                    pass
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        if os.path.ismount(self.dir):
            subprocess.run(["umount", "-l", self.dir], check=False)
        try:
            os.rmdir(self.dir)
            os.unlink(self.log_path)
        except OSError:
            pass


def word_range(addr: int, size: int) -> tuple[int, int, int]:
    """(file offset, byte count, first VA) of the bitmap words covering [addr, addr+size)."""
    lo = addr // WORD_VA * WORD_VA
    hi = -(-(addr + size) // WORD_VA) * WORD_VA
    return (lo >> 12) // 8, (hi - lo) >> 12 >> 3, lo


# Run by a root Python that then drops to uid/gid argv[1] (so it becomes
# non-dumpable, like any process whose credentials changed without exec) and
# tries to open and read each path; "SELF" stands for its own PID.
CHECKER = r"""
import json, os, sys
uid = int(sys.argv[1]); mnt = sys.argv[2]; names = json.loads(sys.argv[3])
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
out = {}
for target, name in names:
    pid = os.getpid() if target == "SELF" else target
    try:
        fd = os.open(os.path.join(mnt, str(pid), name), os.O_RDONLY)
        try:
            os.pread(fd, 64, 0)
        finally:
            os.close(fd)
        out[f"{target}/{name}"] = "ok"
    except OSError as e:
        out[f"{target}/{name}"] = __import__("errno").errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""

# A process of uid argv[1] that is NOT dumpable (credentials changed without
# exec); prints "ready" and sleeps until stdin closes.
NONDUMPABLE = r"""
import os, sys
uid = int(sys.argv[1])
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
print("ready", flush=True)
sys.stdin.read()
"""


def check_with(prefix: list[str], mnt: str, targets: list[tuple[object, str]]) -> dict[str, str | None]:
    """Like check_as, but the checker keeps the credentials ``prefix`` gives it
    (e.g. setpriv dropping a capability, unshare -U making it root in a user
    namespace); None if the prefix itself could not run here."""
    code = CHECKER.replace("os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)",
                           "pass")
    assert code != CHECKER
    # The checker needs the standard library only; the system's interpreter,
    # unlike ours (maybe under /root), can be executed by any uid.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    r = subprocess.run([*prefix, python, "-S", "-c", code, "-1", mnt, json.dumps(targets)],
                       capture_output=True, text=True, timeout=120, cwd="/")
    if r.returncode != 0 and not r.stdout:
        return None
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check_as(uid: int, mnt: str, targets: list[tuple[object, str]]) -> dict[str, str]:
    r = subprocess.run([sys.executable, "-S", "-c", CHECKER, str(uid), mnt, json.dumps(targets)],
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class Users:
    """Processes owned by other users, for the access tests: ``sleep`` as uid
    A and uid B (dumpable: they exec'd), and a non-dumpable process of uid A."""

    A = 42001
    B = 42002

    def __init__(self):
        self.procs = []
        self.a = self._sleep(self.A)
        self.b = self._sleep(self.B)
        nd = subprocess.Popen([sys.executable, "-S", "-c", NONDUMPABLE, str(self.A)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert nd.stdout.readline().strip() == "ready"
        self.procs.append(nd)
        self.nondumpable = nd
        self.root = self._sleep(0)

    def _sleep(self, uid: int) -> subprocess.Popen:
        kw = {} if uid == 0 else {"user": uid, "group": uid, "extra_groups": []}
        p = subprocess.Popen(["sleep", "3600"], cwd="/", **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


# -- real C programs as callers (host and VM) -----------------------------
# probe: the audit's shared-file attack, as a C program run by any uid.
#   probe DIR FILE HALF_WAIT
# maps FILE read-only (MAP_SHARED), faults every page in, then tries each
# mount file of its own process and prints one line per try:
#   <name> open=<errno> io=<errno> n=<bytes>
# For idle_bitmap opened read-write it marks its mapping's pages idle, prints
# "marked", waits for a line on stdin (meanwhile another process touches the
# first half of the file) and prints "learned first=<accessed> second=<accessed>":
# how many pages of each half read accessed -- what the mark and read revealed
# about the other process's accesses.  present_bitmap: "present=<n>".
PROBE_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int bit(const uint64_t *w, unsigned long i) { return (w[i / 64] >> (i % 64)) & 1; }

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: probe DIR FILE\n"); return 2; }
    int ffd = open(argv[2], O_RDONLY);
    struct stat st;
    if (ffd < 0 || fstat(ffd, &st)) { perror("file"); return 3; }
    size_t len = st.st_size, npages = len / 4096;
    volatile unsigned char *map = mmap(NULL, len, PROT_READ, MAP_SHARED, ffd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 3; }
    unsigned sum = 0;
    for (size_t i = 0; i < npages; i++) sum += map[i * 4096];
    uintptr_t start = (uintptr_t)map, lo = start / (64 * 4096) * (64 * 4096);
    uintptr_t hi = (start + len + 64 * 4096 - 1) / (64 * 4096) * (64 * 4096);
    off_t off = (off_t)(lo / 4096 / 8);
    size_t nbytes = (hi - lo) / 4096 / 8;
    uint64_t *buf = aligned_alloc(4096, (nbytes + 4095) / 4096 * 4096);
    unsigned long first = (start - lo) / 4096;
    char path[4096], line[64];
    static const struct { const char *name; int flags; } tries[] = {
        {"idle_bitmap", O_RDWR}, {"idle_bitmap", O_RDONLY}, {"idle_pages", O_RDONLY},
        {"wss", O_RDONLY}, {"present_bitmap", O_RDONLY},
    };
    printf("pid %d sum %u\n", getpid(), sum);
    for (size_t t = 0; t < sizeof tries / sizeof tries[0]; t++) {
        snprintf(path, sizeof path, "%s/%d/%s", argv[1], getpid(), tries[t].name);
        int fd = open(path, tries[t].flags);
        if (fd < 0) { printf("%s open=%d io=0 n=-1\n", tries[t].name, errno); continue; }
        ssize_t n;
        errno = 0;
        if (!strcmp(tries[t].name, "idle_bitmap") && tries[t].flags == O_RDWR) {
            memset(buf, 0xff, nbytes);
            n = pwrite(fd, buf, nbytes, off);
            printf("%s open=0 io=%d n=%zd\nmarked\n", tries[t].name, n < 0 ? errno : 0, n);
            fflush(stdout);
            if (!fgets(line, sizeof line, stdin)) return 5;
            memset(buf, 0, nbytes);
            errno = 0;
            n = pread(fd, buf, nbytes, off);
            if (n == (ssize_t)nbytes) {
                unsigned long a1 = 0, a2 = 0;
                for (unsigned long i = 0; i < npages; i++) {
                    if (!bit(buf, first + i)) { if (i < npages / 2) a1++; else a2++; }
                }
                printf("learned first=%lu second=%lu of %lu\n", a1, a2, (unsigned long)npages / 2);
            } else {
                printf("read io=%d n=%zd\n", n < 0 ? errno : 0, n);
            }
        } else if (!strcmp(tries[t].name, "present_bitmap")) {
            n = pread(fd, buf, nbytes, off);
            unsigned long p = 0;
            if (n == (ssize_t)nbytes)
                for (unsigned long i = 0; i < npages; i++) p += bit(buf, first + i);
            printf("%s open=0 io=%d n=%zd present=%lu\n", tries[t].name, n < 0 ? errno : 0, n, p);
        } else {
            n = pread(fd, buf, 4096, 0);
            printf("%s open=0 io=%d n=%zd\n", tries[t].name, n < 0 ? errno : 0, n);
        }
        fflush(stdout);
        close(fd);
    }
    return 0;
}
"""

# hold: the audit's setuid-exec case, from the side of the descriptor holder.
#   hold DIR PID NAME...
# opens DIR/PID/NAME for each NAME, and /proc/PID/maps and /proc/PID/pagemap
# for comparison, reads each once ("before <name> <n> <errno>"), prints
# "opened", waits for a line on stdin (meanwhile PID executes another
# program), reads each again ("after <name> <n> <errno>") and opens each
# afresh ("fresh <name> <n> <errno>", n=-1: the open failed).
HOLD_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char buf[65536] __attribute__((aligned(4096)));

static void try_read(const char *when, const char *name, int fd)
{
    errno = 0;
    ssize_t n = fd < 0 ? -1 : pread(fd, buf, 4096, 0);
    printf("%s %s %zd %d\n", when, name, n, n < 0 ? errno : 0);
}

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: hold DIR PID NAME...\n"); return 2; }
    int n = argc - 3 + 2, fds[64];
    char paths[64][4096], names[64][64], line[64];
    for (int i = 0; i < n; i++) {
        if (i < argc - 3) {
            snprintf(paths[i], sizeof paths[i], "%s/%s/%s", argv[1], argv[2], argv[3 + i]);
            snprintf(names[i], sizeof names[i], "%s", argv[3 + i]);
        } else {
            const char *p = i == argc - 3 ? "maps" : "pagemap";
            snprintf(paths[i], sizeof paths[i], "/proc/%s/%s", argv[2], p);
            snprintf(names[i], sizeof names[i], "proc_%s", p);
        }
        errno = 0;
        fds[i] = open(paths[i], O_RDONLY);
        if (fds[i] < 0) printf("open %s %d\n", names[i], errno);
        try_read("before", names[i], fds[i]);
    }
    printf("opened\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 5;
    for (int i = 0; i < n; i++) try_read("after", names[i], fds[i]);
    for (int i = 0; i < n; i++) {
        int fd = open(paths[i], O_RDONLY);
        if (fd < 0) { printf("fresh %s -1 %d\n", names[i], errno); continue; }
        try_read("fresh", names[i], fd);
        close(fd);
    }
    return 0;
}
"""

# waiter: what the target executes; says who it runs as, then waits for stdin to close.
WAITER_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void)
{
    char b[64];
    printf("ruid %d euid %d\n", (int)getuid(), (int)geteuid());
    fflush(stdout);
    while (read(0, b, sizeof b) > 0) {}
    return 0;
}
"""

# clonevm PROGRAM: a child sharing this process's mm (clone CLONE_VM, like
# vfork) that executes PROGRAM when told; prints "child <pid>", waits for a
# line on stdin, lets the child exec, and keeps the old mm alive (itself)
# until the child exits.
CLONEVM_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char *prog;
static int go[2];

static int child(void *arg)
{
    char c;
    (void)arg;
    if (read(go[0], &c, 1) != 1) _exit(126);
    execl(prog, prog, (char *)NULL);
    _exit(127);
}

int main(int argc, char **argv)
{
    char line[64];
    if (argc != 2 || pipe(go)) return 2;
    prog = argv[1];
    char *stack = malloc(1 << 20);
    int pid = clone(child, stack + (1 << 20), CLONE_VM | SIGCHLD, NULL);
    if (pid < 0) { perror("clone"); return 3; }
    printf("child %d\n", pid);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 4;
    if (write(go[1], "g", 1) != 1) return 5;
    waitpid(pid, NULL, 0);
    return 0;
}
"""

UNPRIV = 4242          # the audit's unprivileged uid (no passwd entry needed)


class CPrograms:
    """The C callers above, compiled into a directory every uid can reach;
    ``setuid_waiter`` is a setuid-root copy of the waiter (where the file
    system allows setuid: not mounted nosuid), ``waiter`` a plain one."""

    def __init__(self):
        import shutil
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("no C compiler (cc or gcc): the mount's access tests need one")
        self.dir = tempfile.mkdtemp(prefix="idlemap-c-")
        os.chmod(self.dir, 0o755)
        for name, src in (("probe", PROBE_C), ("hold", HOLD_C), ("waiter", WAITER_C),
                          ("clonevm", CLONEVM_C)):
            path = os.path.join(self.dir, name + ".c")
            with open(path, "w") as f:
                f.write(src)
            subprocess.run([cc, "-O1", "-Wall", "-Werror", "-o", os.path.join(self.dir, name), path],
                           check=True)
        self.probe = os.path.join(self.dir, "probe")
        self.hold = os.path.join(self.dir, "hold")
        self.waiter = os.path.join(self.dir, "waiter")
        self.clonevm = os.path.join(self.dir, "clonevm")
        self.setuid_waiter = os.path.join(self.dir, "setuid_waiter")
        shutil.copy(self.waiter, self.setuid_waiter)
        os.chown(self.setuid_waiter, 0, 0)
        os.chmod(self.setuid_waiter, 0o4755)

    def cleanup(self) -> None:
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


def as_user(uid: int) -> dict:
    """subprocess.Popen arguments that run a program as uid/gid ``uid``."""
    return {} if uid == 0 else {"user": uid, "group": uid, "extra_groups": []}


class ExecTarget:
    """A process of ``uid`` that, when told, executes ``program`` (exec in
    place: same PID) and returns once the new program runs, with the
    ruid/euid it reports."""

    def __init__(self, uid: int, program: str):
        self.proc = subprocess.Popen(["/bin/sh", "-c", f'read x; exec "{program}"'], cwd="/",
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     **as_user(uid))
        self.pid = self.proc.pid

    def exec_now(self) -> tuple[int, int]:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()     # "ruid R euid E": the new program runs
        assert len(line) == 4 and line[0] == "ruid", line
        return int(line[1]), int(line[3])

    def close(self) -> None:
        try:
            self.proc.stdin.close()         # end of input: the shell's `read x` returns
        except OSError:
            pass
        end(self.proc, grace_s=10)


def hold_across_exec(progs: CPrograms, mnt: str, holder_uid: int, target: ExecTarget,
                     names: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """The holder opens and reads NAMEs of the target, the target executes
    its program, the holder reads again and opens afresh:
    {(when, name): (bytes or -1, errno)}; also the (ruid, euid) of the new
    program under ("exec", "ids")."""
    h = subprocess.Popen([progs.hold, mnt, str(target.pid), *names], cwd="/", stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **as_user(holder_uid))
    out: dict[tuple[str, str], tuple[int, int]] = {}
    lines = []
    while True:
        line = h.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == "opened":
            break
    out[("exec", "ids")] = target.exec_now()
    rest, err = h.communicate("go\n", timeout=120)
    assert h.returncode == 0, (lines, rest, err)
    for line in lines + rest.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[(parts[0], parts[1])] = (int(parts[2]), int(parts[3]))
    return out
