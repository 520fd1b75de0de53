"""A fuzzer of /dev/idlemap (kmod/), in the test VM.

What it throws at the module: random offsets and sizes (aligned and not,
huge, negative through lseek, near ULONG_MAX), every ioctl number around the
real ones with random arguments, bindings to reaped, zombie, kernel-thread
and exec'ing processes and to PID 1, concurrent readers and writers on one
target from several threads (own fds and a shared one) and processes, a
target whose address space never stops changing (munmap, mremap, madvise
DONTNEED/FREE/PAGEOUT/COLLAPSE, mprotect, THP, hugetlb, fork, exec) and
that is killed and replaced while it is read, fds closed while another
thread reads, readers killed mid-walk.  Only the documented errors may come
back, every answer must be self-consistent (kmod_fuzz.checked_walk), and
the kernel log must stay clean (kernel_log.SPLAT: on the debug kernel KASAN
and lockdep reports included).

IDLEMAP_FUZZ_SECONDS (default 20) is the time budget of the timed tests
together: short in the vm phase, minutes in scripts/test.sh kmod-debug.
IDLEMAP_FUZZ_REPORT: a file to write the figures to (JSON).
"""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from idlemap.kernel import kmod
from idlemap.kernel.tasks import list_tasks, read_task
from idlemap.testing.child import end

import kmod_fuzz as fz

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    os.environ.get("IDLEMAP_IN_VM") != "1", reason="loads a kernel module: only in the test VM")]

BUDGET = float(os.environ.get("IDLEMAP_FUZZ_SECONDS", "20"))
HELPER = fz.__file__
TOTAL = fz.Tally()
SEED = int(os.environ.get("IDLEMAP_FUZZ_SEED", "14"))


@pytest.fixture(scope="module")
def fuzz_report(kmod_loaded):
    """The figures of the whole file, reported once its tests are done (the
    module is conftest.py's kmod_loaded: built against the running kernel's
    tree, the plain or the debug test kernel's, kmodbuild.vm_kernel_tree
    picks by release)."""
    t0 = time.monotonic()
    yield
    secs = time.monotonic() - t0
    report = {"kernel": os.uname().release, "budget_s": BUDGET, "seconds": round(secs, 1),
              "calls": TOTAL.calls, "outcomes": TOTAL.outcomes(), "by_op": TOTAL.by,
              "pages_seen": TOTAL.pages}
    print(f"\nfuzz total: {TOTAL.calls} calls in {secs:.0f} s on {os.uname().release}, "
          f"outcomes {TOTAL.outcomes()}, pages seen by checked walks {TOTAL.pages}")
    if os.environ.get("IDLEMAP_FUZZ_REPORT"):
        with open(os.environ["IDLEMAP_FUZZ_REPORT"], "w") as f:
            json.dump(report, f, indent=1)


@pytest.fixture(autouse=True)
def with_module(fuzz_report):
    """Every test runs with the module loaded.  The kernel log is checked
    around each by conftest.py's kmod_kernel_log."""


@pytest.fixture(scope="module")
def hugetlb_pool():
    """32 huge pages, so the target maps hugetlb memory too; restored after."""
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write("32")
    yield
    with open(path, "w") as f:
        f.write(old)


class Churner:
    """The target (kmod_fuzz.py churn), replaced now and then: killed
    (SIGKILL or SIGTERM), left a zombie for a moment, reaped, started again.
    Its current pid is in a file the agents read when they get ESRCH."""

    def __init__(self, tmp_path, seed):
        self.pidfile = str(tmp_path / "target.pid")
        self.rnd = random.Random(seed)
        self.n = 0
        self.proc = None
        self.start()

    def start(self):
        self.n += 1
        self.proc = subprocess.Popen([sys.executable, HELPER, "churn", str(self.rnd.randrange(1 << 30))])
        tmp = self.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(self.proc.pid))
        os.replace(tmp, self.pidfile)

    def cycle(self):
        self.proc.send_signal(self.rnd.choice([signal.SIGKILL, signal.SIGTERM]))
        time.sleep(self.rnd.uniform(0, 0.05))            # a zombie until we wait
        self.proc.wait()
        self.start()

    def drive(self, seconds):
        """Replace the target every 0.3-3 s; returns the most swap any
        target had (VmSwap, KiB), sampled every 0.1 s."""
        deadline = time.monotonic() + seconds
        swap = 0
        while time.monotonic() < deadline:
            until = min(deadline, time.monotonic() + self.rnd.uniform(0.3, 3))
            while time.monotonic() < until:
                swap = max(swap, _vm_swap_kib(self.proc.pid))
                time.sleep(0.1)
            self.cycle()
        return swap

    def target(self):
        return fz._target_from(self.pidfile)()

    def close(self):
        end(self.proc)


def _vm_swap_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("VmSwap:")), 0)
    except (OSError, ValueError):
        return 0


class Threads:
    """Agents in threads of this process; the first exception is re-raised."""

    def __init__(self):
        self.threads, self.errors = [], []

    def start(self, fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as e:      # noqa: BLE001 - handed to the test
                self.errors.append(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout):
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), "a fuzzing thread hangs"
        if self.errors:
            raise self.errors[0]


def _report(name, tally, secs):
    TOTAL.merge(tally.as_dict())
    print(f"\nfuzz {name}: {tally.calls} calls in {secs:.0f} s, outcomes {tally.outcomes()}, "
          f"pages seen {tally.pages}")


def test_fuzz_calls_on_one_fd(tmp_path):
    """One fd, every kind of call, against a target that keeps changing and
    is killed and replaced every few seconds."""
    secs = max(3.0, 0.25 * BUDGET)
    tally, arena = fz.Tally(), fz.Arena()
    ch = Churner(tmp_path, SEED)
    th = Threads()
    fd = os.open(fz.DEVICE, os.O_RDWR)
    try:
        th.start(fz.agent, fd, ch.target, secs, SEED, tally, arena)
        ch.drive(secs)
        th.join(120)
    finally:
        os.close(fd)
        ch.close()
    _report("one fd", tally, secs)
    out = tally.outcomes()
    assert out.get("ok", 0) > 0 and out.get("EINVAL", 0) > 0


def test_fuzz_ioctl_numbers_around_ours():
    """Every direction, size and number near the five real ioctls (and the
    neighbouring magic numbers) with random arguments, then random commands
    (not the ones the VFS answers itself): ENOTTY unless it is ours."""
    rnd = random.Random(SEED)
    arena, tally = fz.Arena(), fz.Tally()
    ours = {fz.IOC_VERSION, fz.IOC_BIND, fz.IOC_SET_MODE, fz.IOC_WALK, fz.IOC_MAPS_SIG}
    # a well-formed walk argument (nothing to write: no buffers) in the arena
    good = fz.WALK.pack(0, 64 * fz.PAGE, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    ctypes_buf = (fz.ctypes.c_char * len(good)).from_address(arena.base)
    ctypes_buf[:] = good
    t0 = time.monotonic()
    with kmod.Device(os.getpid()) as d:
        cmds = [(dr << 30) | (size << 16) | (magic << 8) | nr
                for magic in (fz.MAGIC - 1, fz.MAGIC, fz.MAGIC + 1) for dr in range(4)
                for nr in range(16) for size in (0, 1, 8, 79, 80, 81, 0x3fff)]
        vfs_types = {0x00, 0x54, 0x58, 0x66, 0x94}          # FIGETBSZ, FIO*, FIFREEZE, FS_IOC_*, FICLONE
        while len(cmds) < 3000 + 2000 * BUDGET / 30:
            c = rnd.getrandbits(32)
            if (c >> 8) & 0xff not in vfs_types:
                cmds.append(c)
        for cmd in cmds:
            for arg in (0, 1, fz.ULONG, arena.base, arena.bad_pointer(rnd), rnd.getrandbits(64)):
                if cmd == fz.IOC_BIND and arg not in (0, fz.ULONG) and arg < (1 << 32):
                    continue            # a random small number may be anyone's pid: bound to below
                if cmd in ours:
                    r = fz.call(tally, "ioctl-ours", fz.sys_call("ioctl"), d.fd, cmd, arg)
                    assert cmd != fz.IOC_VERSION or r == kmod.API_VERSION
                    continue
                with pytest.raises(OSError) as ei:
                    fz.raw(fz.libc.ioctl(d.fd, cmd, arg))
                assert ei.value.errno == errno.ENOTTY, (hex(cmd), ei.value)
                tally.add("ioctl-other", "ENOTTY")
    _report("ioctl numbers", tally, time.monotonic() - t0)
    assert tally.outcomes().get("ENOTTY", 0) > 2000


def _state(pid):
    task = read_task(pid)
    return task.state if task is not None else None


def _comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _kthreads():
    return [t.pid for t in list_tasks() if t.kthread]


def _ops(fd, tally, bufs, name):
    """Read, mark and walk through a bound fd; returns the errnos seen."""
    seen = set()
    for op, fn in (("pread", lambda: os.pread(fd, 4096, 0x5000_0000 >> 15)),
                   ("pwrite", lambda: os.pwrite(fd, b"\xff" * 64, 0x5000_0000 >> 15)),
                   ("walk", lambda: fz.checked_walk(fd, 0, fz.VA_LIMIT, bufs, True, (True,) * 4))):
        try:
            fn()
            tally.add(f"{name}-{op}", "ok")
        except OSError as e:
            assert e.errno in fz.ALLOWED, (name, op, e)
            tally.add(f"{name}-{op}", errno.errorcode[e.errno])
            seen.add(errno.errorcode[e.errno])
    return seen


def test_fuzz_bindings_reaped_zombie_kthreads_init_threads():
    """Reaped and zombie processes: ESRCH; kernel threads: EINVAL; init, a
    thread of ours, an exec'ing process: bound, read whole, marked; bound
    targets that die: ESRCH for every later call."""
    tally, bufs = fz.Tally(), np.zeros((4, fz.WORDS), np.uint64)
    t0 = time.monotonic()
    rounds = max(1, int(BUDGET / 15))
    fd = os.open(fz.DEVICE, os.O_RDWR)

    def bind(pid):
        return fz.raw(fz.libc.ioctl(fd, fz.IOC_BIND, pid & fz.ULONG))
    try:
        for _ in range(rounds):
            reaped = subprocess.Popen(["true"])
            reaped.wait()
            if _state(reaped.pid) is None:
                with pytest.raises(OSError) as ei:
                    bind(reaped.pid)
                assert ei.value.errno == errno.ESRCH
            zombie = os.fork()
            if zombie == 0:
                os._exit(0)
            while _state(zombie) != "Z":
                time.sleep(0.001)
            with pytest.raises(OSError) as ei:
                bind(zombie)
            assert ei.value.errno == errno.ESRCH
            os.waitpid(zombie, 0)
            kthreads = _kthreads()
            assert 2 in kthreads
            for k in kthreads:
                with pytest.raises(OSError) as ei:
                    bind(k)
                assert ei.value.errno == errno.EINVAL, k
                tally.add("bind-kthread", "EINVAL")
            for bad in (0, -1, 1 << 31, (1 << 22) + 1, fz.ULONG, (1 << 32) | 1):
                assert fz.call(tally, "bind-invalid", bind, bad) is None
            # init and ourselves: whole address spaces, read and re-marked
            for pid in (1, os.getpid()):
                bind(pid)
                assert _ops(fd, tally, bufs, "live") == set()
            # a thread of ours, bound by its TID, then gone
            tid, go = [], threading.Event()
            def park(tid=tid, go=go):
                tid.append(threading.get_native_id())
                go.wait()
            t = threading.Thread(target=park)
            t.start()
            while not tid:
                time.sleep(0.001)
            bind(tid[0])
            assert _ops(fd, tally, bufs, "thread") == set()
            go.set()
            t.join()
            while _state(tid[0]) is not None:
                time.sleep(0.001)
            assert _ops(fd, tally, bufs, "thread-gone") == {"ESRCH"}
            # bound, then killed: a zombie, then reaped
            child = subprocess.Popen(["sleep", "60"])
            bind(child.pid)
            assert _ops(fd, tally, bufs, "child") == set()
            child.send_signal(signal.SIGKILL)
            while _state(child.pid) != "Z":
                time.sleep(0.001)
            assert _ops(fd, tally, bufs, "zombie") == {"ESRCH"}
            child.wait()
            assert _ops(fd, tally, bufs, "reaped") == {"ESRCH"}
            # bound across exec: a new mm under the same pid, read again
            ex = subprocess.Popen(["sh", "-c", "read x; exec sleep 60"], stdin=subprocess.PIPE)
            bind(ex.pid)
            _ops(fd, tally, bufs, "pre-exec")
            ex.stdin.write(b"\n")
            ex.stdin.flush()
            deadline = time.monotonic() + 30
            while _comm(ex.pid) != "sleep" and time.monotonic() < deadline:
                time.sleep(0.005)
            assert _ops(fd, tally, bufs, "exec") == set()
            end(ex)
    finally:
        os.close(fd)
    _report("bindings", tally, time.monotonic() - t0)


def test_fuzz_concurrent_threads_and_processes_on_one_target(tmp_path, zram_swap, hugetlb_pool):
    """Three threads with their own fds, two threads sharing one, and two
    processes, all on one target that is paged out to zram, collapsed,
    split, remapped and replaced meanwhile."""
    secs = max(5.0, 0.4 * BUDGET)
    arena, tallies = fz.Arena(), [fz.Tally() for _ in range(5)]
    ch = Churner(tmp_path, SEED + 1)
    fds = [os.open(fz.DEVICE, os.O_RDWR) for _ in range(4)]
    procs = [subprocess.Popen([sys.executable, HELPER, "agent", ch.pidfile, str(secs), str(SEED + 10 + i)],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    th = Threads()
    try:
        for i in range(5):
            th.start(fz.agent, fds[min(i, 3)], ch.target, secs, SEED + 20 + i, tallies[i], arena)
        swap_kib = ch.drive(secs)
        th.join(180)
        total = fz.Tally()
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0, f"agent process failed ({p.returncode})"
            total.merge(json.loads(out))
        for t in tallies:
            total.merge(t.as_dict())
    finally:
        for fd in fds:
            os.close(fd)
        for p in procs:
            end(p)
        ch.close()
    _report(f"concurrent ({ch.n} targets, up to {swap_kib} KiB of a target swapped)", total, secs)
    assert total.outcomes().get("ok", 0) > 0


def test_fuzz_close_and_kill_while_reading(tmp_path):
    """An fd closed (the only one, or one of two after dup, or the parent's
    copy after fork) while another thread or process walks through it, and
    reader processes SIGKILLed mid-walk."""
    secs = max(3.0, 0.15 * BUDGET)
    rnd = random.Random(SEED + 2)
    tally, bufs = fz.Tally(), np.zeros((4, fz.WORDS), np.uint64)
    ch = Churner(tmp_path, SEED + 3)
    deadline = time.monotonic() + secs
    kills = closes = 0
    try:
        while time.monotonic() < deadline:
            fd = os.open(fz.DEVICE, os.O_RDWR)
            pid = ch.target()
            if fz.call(tally, "bind", fz.sys_call("ioctl"), fd, fz.IOC_BIND, pid) is None:
                os.close(fd)
                ch.cycle()
                continue
            how = rnd.choice(["close", "dup", "fork"])
            use = os.dup(fd) if how == "dup" else fd
            if how == "fork":
                child = os.fork()
                if child == 0:          # walks through the inherited file until told to stop
                    try:
                        for _ in range(200):
                            fz.checked_walk(use, 0, fz.VA_LIMIT, bufs, True, (True,) * 4)
                    except (OSError, AssertionError):
                        pass
                    os._exit(0)
                time.sleep(rnd.uniform(0, 0.01))
                os.close(fd)
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                closes += 1
                continue
            stop = threading.Event()

            def reader(use=use, stop=stop):
                while not stop.is_set():
                    try:
                        fz.checked_walk(use, 0, fz.VA_LIMIT, bufs, rnd.random() < 0.5, (True,) * 4)
                        tally.add("walk", "ok")
                    except OSError as e:
                        if e.errno == errno.EBADF:
                            tally.add("walk", "EBADF")
                            return
                        assert e.errno in fz.ALLOWED, e
                        tally.add("walk", errno.errorcode[e.errno])
            th = Threads()
            th.start(reader)
            time.sleep(rnd.uniform(0, 0.01))
            os.close(fd)                 # nothing else opens a file until the reader is joined
            if how == "dup":
                time.sleep(rnd.uniform(0, 0.005))
                os.close(use)
            th.join(60)
            closes += 1
            if rnd.random() < 0.3:       # a reader process killed mid-walk
                p = subprocess.Popen([sys.executable, HELPER, "agent", ch.pidfile, "30", str(rnd.randrange(1000))],
                                     stdout=subprocess.DEVNULL)
                time.sleep(rnd.uniform(0.2, 1.0))
                end(p)              # SIGKILL, then reaped
                kills += 1
            if rnd.random() < 0.2:
                ch.cycle()
    finally:
        ch.close()
    _report(f"close/kill ({closes} closes, {kills} kills)", tally, secs)
    assert closes > 0


def test_unprivileged_open_is_eperm():
    """Any open mode as uid nobody (device mode loosened to 0666): EPERM;
    O_PATH opens (no ->open call) but reads and ioctls are EBADF."""
    os.chmod(fz.DEVICE, 0o666)
    try:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.setgid(65534)
                os.setuid(65534)
                for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_NONBLOCK):
                    try:
                        os.close(os.open(fz.DEVICE, flags))
                        code = 1
                    except OSError as e:
                        code = code or (0 if e.errno == errno.EPERM else 2)
                fd = os.open(fz.DEVICE, os.O_PATH)
                for fn in (lambda: os.pread(fd, 8, 0), lambda: fz.raw(fz.libc.ioctl(fd, fz.IOC_BIND, 1))):
                    try:
                        fn()
                        code = code or 3
                    except OSError as e:
                        code = code or (0 if e.errno == errno.EBADF else 4)
                os.close(fd)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, f"unprivileged open: case {os.WEXITSTATUS(status)}"
    finally:
        os.chmod(fz.DEVICE, 0o600)
