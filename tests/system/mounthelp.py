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

WORD_VA = 64 * 4096


class Mount:
    """``idlemap mount DIR --foreground --json`` in a child; ready when its
    first stdout line (the JSON 'mounted' record) arrives."""

    def __init__(self, *extra: str):
        self.dir = tempfile.mkdtemp(prefix="idlemap-mnt-")
        os.chmod(self.dir, 0o755)          # other uids must reach the mount point
        self.log_path = self.dir + ".log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "idlemap", "mount", self.dir, "--foreground", "--json", "-v", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
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
