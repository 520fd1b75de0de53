"""The pieces of the /dev/idlemap fuzzer (test_kmod_fuzz.py): raw calls
through libc (any size, offset, pointer or ioctl number, which Python's os
functions would refuse or allocate for), a guarded scratch arena for bad
pointers, the result tally, one fuzzing agent, and a target that keeps
changing its address space.

Run as a script it is one of those processes:
  kmod_fuzz.py churn SEED              the target: map, touch, munmap, mremap,
                                       madvise, mprotect, fork... until killed
  kmod_fuzz.py agent PIDFILE SECS SEED an agent in its own process, bound to
                                       the pid in PIDFILE; prints its tally (JSON)

No pointer handed to the module can reach memory of ours outside the arena:
every "good" buffer is a numpy array of at least the size the call may
write, every bad one is in the arena (read-write, then read-only, then
PROT_NONE: the module writes at most 256 KiB per bitmap per call, so a
write starting in the first 1 MiB faults before it leaves the arena), NULL,
a kernel address or a non-canonical one.
"""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import random
import signal
import struct
import sys
import time

import numpy as np

PAGE = mmap.PAGESIZE
PAGE_SHIFT = PAGE.bit_length() - 1
MiB = 1 << 20
VA_LIMIT = 1 << 47                       # user space rounded to 64 pages (4-level paging)
MAX_CALL_PAGES = 1 << 21                 # the module's bound per call (docs/kmod.md)
WORDS = MAX_CALL_PAGES // 64             # u64 words one call may write per bitmap
DEVICE = "/dev/idlemap"
MAGIC = 0xB7
WALK = struct.Struct("=6Q2I3Q")          # struct idlemap_walk, 80 bytes
IOC_VERSION, IOC_BIND, IOC_SET_MODE = (MAGIC << 8 | n for n in range(3))
IOC_WALK = (3 << 30) | (WALK.size << 16) | (MAGIC << 8) | 3
IOC_MAPS_SIG = (2 << 30) | (8 << 16) | (MAGIC << 8) | 4   # _IOR: u64 out
ULONG = (1 << 64) - 1
# What the interface may answer (docs/kmod.md, "Errors"); anything else fails.
ALLOWED = {errno.EINVAL, errno.ESRCH, errno.EFAULT, errno.ENXIO, errno.ENOTTY, errno.EBADFD}

libc = ctypes.CDLL(None, use_errno=True)
for _name, _args, _res in (
        ("pread", [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong], ctypes.c_ssize_t),
        ("pwrite", [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong], ctypes.c_ssize_t),
        ("read", [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_ssize_t),
        ("write", [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_ssize_t),
        ("lseek", [ctypes.c_int, ctypes.c_longlong, ctypes.c_int], ctypes.c_longlong),
        ("ioctl", [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong], ctypes.c_int),
        ("mmap", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long], ctypes.c_void_p),
        ("munmap", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int),
        ("mremap", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int], ctypes.c_void_p),
        ("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int),
        ("mprotect", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int),
        ("memset", [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t], ctypes.c_void_p)):
    getattr(libc, _name).argtypes = _args
    getattr(libc, _name).restype = _res
MAP_FAILED = ctypes.c_void_p(-1).value
PROT_NONE = 0


def raw(result: int) -> int:
    """A libc call's result, or OSError with its errno."""
    if result == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return result


def sys_call(name: str):
    """libc's `name` as a function raising OSError."""
    fn = getattr(libc, name)
    return lambda *args: raw(fn(*args))


class Arena:
    """1 MiB read-write, 1 MiB read-only, 1 MiB PROT_NONE, never unmapped:
    the target of every bad or short buffer."""

    def __init__(self):
        base = libc.mmap(None, 3 * MiB, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert base not in (None, MAP_FAILED)
        raw(libc.mprotect(base + MiB, MiB, mmap.PROT_READ))
        raw(libc.mprotect(base + 2 * MiB, MiB, PROT_NONE))
        self.base = base

    def bad_pointer(self, rnd: random.Random) -> int:
        return rnd.choice([
            0, 1, 8, PAGE,
            self.base + rnd.randrange(MiB),                 # runs into read-only
            self.base + MiB - rnd.choice([8, 64, PAGE]),    # a few bytes before read-only
            self.base + MiB + rnd.randrange(MiB),           # read-only
            self.base + 2 * MiB + rnd.randrange(MiB),       # PROT_NONE
            1 << 47, (1 << 47) - 8, 0xffff800000000000,     # non-canonical, kernel
            0xffffffffff600000, ULONG - 7, ULONG])


class Tally:
    """Calls made and their outcomes, by operation; and the pages the
    checked walks saw (what the target's churn put in front of them)."""

    def __init__(self):
        self.calls = 0
        self.by: dict[str, int] = {}
        self.pages = dict.fromkeys(("present", "idle", "huge", "swapped"), 0)

    def add(self, op: str, outcome: str) -> None:
        self.calls += 1
        key = f"{op}:{outcome}"
        self.by[key] = self.by.get(key, 0) + 1

    def merge(self, other: dict) -> None:
        self.calls += other["calls"]
        for k, v in other["by"].items():
            self.by[k] = self.by.get(k, 0) + v
        for k, v in other["pages"].items():
            self.pages[k] += v

    def as_dict(self) -> dict:
        return {"calls": self.calls, "by": self.by, "pages": self.pages}

    def outcomes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in self.by.items():
            o = k.split(":", 1)[1]
            out[o] = out.get(o, 0) + v
        return out


def call(tally: Tally, op: str, fn, *args, allowed=ALLOWED):
    """fn(*args), tallied; an errno outside `allowed` propagates."""
    try:
        r = fn(*args)
    except OSError as e:
        if e.errno not in allowed:
            raise AssertionError(f"{op}{args!r}: unexpected {errno.errorcode.get(e.errno, e.errno)}") from e
        tally.add(op, errno.errorcode[e.errno])
        return None
    tally.add(op, "ok")
    return r


def walk(fd: int, start: int, end: int, ptrs=(0, 0, 0, 0), flags: int = 0, reserved: int = 0):
    """IDLEMAP_IOC_WALK; returns (next, nr_present, nr_idle)."""
    arg = ctypes.create_string_buffer(WALK.pack(start, end, *ptrs, flags, reserved, 0, 0, 0), WALK.size)
    raw(libc.ioctl(fd, IOC_WALK, ctypes.addressof(arg)))
    return WALK.unpack(arg.raw)[8:]


def checked_walk(fd: int, start: int, end: int, bufs: np.ndarray, clear: bool, want: tuple[bool, ...],
                 tally: Tally | None = None):
    """A walk into good buffers, and what must hold of any answer: next in
    (start, end] (a multiple of 64 pages from start unless it is end); idle,
    huge within present; swapped outside it; counts equal the bits."""
    npages = min((end - start) >> PAGE_SHIFT, MAX_CALL_PAGES)
    words = -(-npages // 64)
    bufs[:, :words] = 0xA5A5A5A5A5A5A5A5               # stale data must be overwritten
    ptrs = tuple(bufs[k].ctypes.data if want[k] else 0 for k in range(4))
    nxt, nr_present, nr_idle = walk(fd, start, end, ptrs, 1 if clear else 0)
    assert start < nxt <= end and (nxt == end or (nxt - start) % (64 * PAGE) == 0), (start, end, nxt)
    assert nr_idle <= nr_present, (nr_idle, nr_present)
    # Whole words are written and bits past the pages walked are 0: compare
    # words (a call covers up to 2 Mi pages: no per-bit arrays).
    done = -(-((nxt - start) >> PAGE_SHIFT) // 64)
    idle, present, huge, swapped = (bufs[k, :done] if want[k] else None for k in range(4))
    if present is not None:
        assert int(np.bitwise_count(present).sum()) == nr_present, (int(np.bitwise_count(present).sum()), nr_present)
        for name, bits in (("idle", idle), ("huge", huge)):
            if bits is not None:
                assert not (bits & ~present).any(), f"{name} bits outside present"
        if swapped is not None:
            assert not (swapped & present).any(), "a page both present and swapped"
    if idle is not None:
        assert int(np.bitwise_count(idle).sum()) == nr_idle
    if tally is not None:
        tally.pages["present"] += nr_present
        tally.pages["idle"] += nr_idle
        for name, bits in (("huge", huge), ("swapped", swapped)):
            if bits is not None:
                tally.pages[name] += int(np.bitwise_count(bits).sum())
    return nxt


def read_maps(pid: int) -> list[tuple[int, int]]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return [tuple(int(x, 16) for x in ln.split()[0].split("-")) for ln in f]
    except (OSError, ValueError):
        return []


def agent(fd: int, target, seconds: float, seed: int, tally: Tally, arena: Arena) -> None:
    """Random calls on fd for `seconds`, bound to target() (re-read on ESRCH)."""
    rnd = random.Random(seed)
    bufs = np.zeros((4, WORDS), np.uint64)
    maps: list[tuple[int, int]] = []
    pid = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid or rnd.random() < 0.02:
            pid = target()
            if call(tally, "bind", sys_call("ioctl"), fd, IOC_BIND, pid) is None:
                pid = 0
                time.sleep(0.001)
                continue
            maps = read_maps(pid)
        op = rnd.randrange(10)
        lo, hi = rnd.choice(maps) if maps and rnd.random() < 0.9 else (0, VA_LIMIT)
        if op <= 3:                                      # a checked walk near a mapping
            start = (lo + rnd.randrange(-64, 64) * PAGE) & ~(PAGE - 1)
            start = min(max(start, 0), VA_LIMIT - PAGE)
            end = min(VA_LIMIT, max(start + PAGE, hi + rnd.randrange(-64, 4096) * PAGE))
            want = tuple(rnd.random() < 0.7 for _ in range(4))
            r = call(tally, "walk", checked_walk, fd, start, end, bufs, rnd.random() < 0.5, want, tally)
            if r is None:
                pid = 0
        elif op == 4:                                    # the whole address space, call after call
            start, n = rnd.choice([0, lo & ~((8 << 30) - 1)]), 0
            while start < VA_LIMIT and n < 64:
                r = call(tally, "walk-all", checked_walk, fd, start, VA_LIMIT, bufs,
                         rnd.random() < 0.3, (True, True, True, True), tally)
                if r is None:
                    pid = 0
                    break
                start, n = r, n + 1
        elif op == 5:                                    # a walk with bad arguments
            start = rnd.choice([lo, rnd.randrange(VA_LIMIT), VA_LIMIT, ULONG & ~(PAGE - 1), 0])
            end = rnd.choice([hi, start + PAGE, start - PAGE, VA_LIMIT, VA_LIMIT + PAGE, ULONG,
                              start + rnd.randrange(1 << 40)]) & ULONG
            if rnd.random() < 0.2:
                start += rnd.randrange(1, PAGE)
            ptrs = [arena.bad_pointer(rnd) if rnd.random() < 0.5 else 0 for _ in range(4)]
            call(tally, "walk-bad", walk, fd, start & ULONG, end, ptrs,
                 rnd.choice([0, 1, 2, 1 << 31, 0xffffffff]), rnd.choice([0, 0, 0, 1, 0xffffffff]))
        elif op == 6:                                    # RFC pread / pwrite
            off = ((lo >> PAGE_SHIFT) // 8 + rnd.randrange(-512, 512) * 8) if rnd.random() < 0.8 \
                else rnd.choice([0, 8, rnd.randrange(1 << 40) * 8, (1 << 63) - 8, -8, -1, 7, 4])
            size = rnd.choice([0, 8, 64, 4096, 8 * WORDS, 8 * WORDS + 8, 7, 12, 1 << 30, ULONG])
            if rnd.random() < 0.5 and size <= 8 * WORDS:
                ptr = bufs[0].ctypes.data if rnd.random() < 0.8 else arena.bad_pointer(rnd)
            else:
                ptr = arena.bad_pointer(rnd) if rnd.random() < 0.5 else arena.base
            if rnd.random() < 0.5:
                r = call(tally, "pread", sys_call("pread"), fd, ptr, size, off)
                assert r is None or (r % 8 == 0 and r <= size), (r, size)
            else:
                if ptr == bufs[0].ctypes.data:
                    bufs[0, :size // 8] = rnd.getrandbits(64)
                call(tally, "pwrite", sys_call("pwrite"), fd, ptr, size, off)
        elif op == 7:                                    # the file position: lseek, read, write
            whence = rnd.choice([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, 3, 4, 5])
            pos = rnd.choice([0, 8, -8, (1 << 63) - 8, -(1 << 63), (lo >> PAGE_SHIFT) // 8, 7])
            call(tally, "lseek", sys_call("lseek"), fd, pos, whence)
            size = rnd.choice([0, 8, 4096, 7])
            ptr = bufs[0].ctypes.data
            call(tally, "read", sys_call("read"), fd, ptr, size)
            if rnd.random() < 0.3:
                call(tally, "write", sys_call("write"), fd, ptr, size)
        elif op == 8:                                    # modes; the memory map's signature
            mode = rnd.choice([0, 1, 0x100, 0x101, 2, 0x200, ULONG, 1 << 32])
            call(tally, "mode", sys_call("ioctl"), fd, IOC_SET_MODE, mode)
            out = rnd.choice([bufs[0].ctypes.data, arena.base, arena.bad_pointer(rnd), 0, ULONG])
            call(tally, "maps-sig", sys_call("ioctl"), fd, IOC_MAPS_SIG, out)
        else:                                            # rebind elsewhere for a moment
            other = rnd.choice([os.getpid(), 1, 0, ULONG, 1 << 31, (1 << 32) + pid])
            if call(tally, "bind-other", sys_call("ioctl"), fd, IOC_BIND, other) is None:
                pid = 0
            else:                                        # walk ourselves or init until the next rebind
                pid, maps = other, read_maps(other)


# --- the target: an address space that never stops changing -------------------

def churn(seed: int) -> None:
    rnd = random.Random(seed)
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    maps: list[list[int]] = []                   # [addr, length, may grow]
    hugetlb = _hugetlb_pages() > 0
    children: list[int] = []

    def touch(addr, length, step=1, write=True):
        a = np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(addr))
        if write:
            a[::PAGE * step] = 1
        else:
            int(a[::PAGE * step].sum())

    while True:
        op = rnd.randrange(12)
        total = sum(m[1] for m in maps)
        if op <= 2 or not maps:
            if total > 256 * MiB:
                continue
            length = rnd.choice([PAGE, 17 * PAGE, 2 * MiB, 4 * MiB + 3 * PAGE, 16 * MiB, 64 * MiB])
            flags, huge = private, False
            if hugetlb and rnd.random() < 0.1:                           # MAP_HUGETLB
                share = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
                flags, huge, length = rnd.choice([private, share]) | 0x40000, True, 2 * MiB
            elif rnd.random() < 0.2:
                # (shmem: growing it by mremap would leave pages past the object: SIGBUS)
                flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
            addr = libc.mmap(None, length, rw, flags, -1, 0)
            if addr in (None, MAP_FAILED):
                continue
            if not huge:
                libc.madvise(addr, length, rnd.choice([14, 15]))            # (NO)HUGEPAGE
            touch(addr, length, rnd.choice([1, 2, 7]))
            maps.append([addr, length, flags == private])         # hugetlb, shmem: never grown
            continue
        m = rnd.choice(maps)
        addr, length, growable = m
        part = rnd.randrange(0, max(1, length // PAGE)) * PAGE
        plen = max(PAGE, min(length - part, rnd.choice([PAGE, 2 * MiB, length])))
        if op == 3:                                      # munmap all, or a piece (splits the VMA)
            if rnd.random() < 0.5 or length == PAGE:
                libc.munmap(addr, length)
                maps.remove(m)
            else:
                libc.munmap(addr + length - plen, plen) if plen < length else None
                m[1] = length - plen if plen < length else length
        elif op == 4:                                    # mremap: grow, shrink, move
            new = max(PAGE, length + rnd.choice([-2 * MiB, -PAGE, PAGE, 2 * MiB, 8 * MiB]))
            new = new if growable else min(new, length)
            r = libc.mremap(addr, length, new, 1)        # MREMAP_MAYMOVE
            if r not in (None, MAP_FAILED):
                m[0], m[1] = r, new
        elif op == 5:                                    # zap, free, cool, page out (swap), collapse
            libc.madvise(addr + part, plen, rnd.choice([4, 8, 20, 21, 21, 21, 25]))
        elif op == 6:                                    # protection changes split VMAs and THPs
            libc.mprotect(addr + part, plen, rnd.choice([PROT_NONE, mmap.PROT_READ, rw]))
        elif op in (7, 8):                               # touch (where writable), read
            libc.mprotect(addr, length, rw)
            touch(addr, length, rnd.choice([1, 3, 64]), write=op == 7)
        elif op == 9 and len(children) < 4:              # fork: COW, then a zombie for a while
            pid = os.fork()
            if pid == 0:
                libc.mprotect(addr, length, rw)
                touch(addr, length, 5)
                os._exit(0)
            children.append(pid)
        elif op == 10 and children:
            os.waitpid(children.pop(0), 0)
        elif op == 11 and rnd.random() < 0.02:           # exec: a new mm under the same pid
            os.execv(sys.executable, [sys.executable, __file__, "churn", str(seed + 1)])


def _hugetlb_pages() -> int:
    try:
        with open("/proc/sys/vm/nr_hugepages") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _target_from(pidfile: str):
    def target() -> int:
        try:
            with open(pidfile) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0
    return target


def main(argv: list[str]) -> None:
    if argv[0] == "churn":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        churn(int(argv[1]))
    elif argv[0] == "agent":
        tally = Tally()
        fd = os.open(DEVICE, os.O_RDWR)
        agent(fd, _target_from(argv[1]), float(argv[2]), int(argv[3]), tally, Arena())
        os.close(fd)
        print(json.dumps(tally.as_dict()))
    else:
        raise SystemExit(f"usage: {__file__} churn SEED | agent PIDFILE SECONDS SEED")


if __name__ == "__main__":
    main(sys.argv[1:])
