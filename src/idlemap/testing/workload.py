"""A workload whose working set is known exactly, driven step by step.

Used by ``idlemap demo``, the tests and the benchmarks.  The child process
maps memory and touches exactly the pages it is told to, at C speed (numpy
strided access, never a per-page Python loop), then acknowledges; so a test
can mark idle -> touch set X -> wait for the ack -> read, with no clock race.

Protocol (one line each way, over the child's stdin/stdout):
  map NAME MiB [thp|nothp|hugetlb|hugetlb1g] [file PATH] [shared]  -> "ok ADDR"
                                      (hugetlb: MAP_HUGETLB, the default huge page
                                      size, hugetlb1g: 1 GiB pages; MiB a multiple
                                      of it, pages reserved beforehand)
  touch NAME STEP [FIRST [COUNT]]     write pages FIRST, FIRST+STEP, ... -> "ok N"
  read NAME STEP [FIRST [COUNT]]      read them instead (no write) -> "ok N"
  hot NAME FIRST COUNT                keep touching those pages in a loop
                                      until the next command -> "ok"
  stop                                stop a hot loop -> "ok ROUNDS"
  unmap NAME | pid | exit
  sum NAME                            sum of every byte (uint64), reading
                                      every page: a checksum of the data -> "ok N"
  bind NAME NODE [FIRST [COUNT]]      mbind pages FIRST..FIRST+COUNT-1 (all
                                      from FIRST if COUNT is 0) to NUMA node
                                      NODE, moving those present -> "ok"
"""
from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import threading

from .child import end

PAGE = mmap.PAGESIZE
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MAP_HUGETLB = 0x40000     # <linux/mman.h>; not in Python's mmap module
MAP_HUGE_1GB = 30 << 26   # log2(1 GiB) << MAP_HUGE_SHIFT
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MPOL_BIND = 2
_MPOL_MF_MOVE = 1 << 1


def _touch(arr, step: int, first: int, count: int) -> int:
    # One byte per page, written without reading first: a read fault on a
    # THP-eligible range maps the huge zero page, and the write after it
    # falls back to 4 KiB pages (mm/huge_memory.c), so `+= 1` would defeat
    # MADV_HUGEPAGE.  A strided numpy fill is C speed.
    per = PAGE
    view = arr[first * per:(first + count) * per:step * per] if count else arr[first * per::step * per]
    view.fill(1)
    return int(view.size)


class _Child:
    def __init__(self):
        self.maps: dict[str, tuple[mmap.mmap, object, int]] = {}
        self.hot: threading.Thread | None = None
        self.stop_evt = threading.Event()
        self.rounds = 0

    def cmd_map(self, name, mib, *opts):
        import numpy as np
        size = int(float(mib) * (1 << 20))
        opts = list(opts)
        if "file" in opts:
            path = opts[opts.index("file") + 1]
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED)
            os.close(fd)
        else:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            if "shared" in opts:
                flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
            if "hugetlb" in opts or "hugetlb1g" in opts:
                # hugetlb mappings never merge with a neighbour (their own
                # file) and are huge-page aligned: no guard page, no madvise
                flags |= MAP_HUGETLB | (MAP_HUGE_1GB if "hugetlb1g" in opts else 0)
                mm = mmap.mmap(-1, size, flags=flags)
                arr = np.frombuffer(mm, dtype=np.uint8)
                addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
                self.maps[name] = (mm, arr, addr)
                return f"{addr:#x}"
            # Over-allocate: 2 MiB so an aligned 2 MiB start exists for THP,
            # and a PROT_NONE guard page at the end so the kernel cannot
            # merge this mapping with a neighbour (tests look mappings up).
            extra = (2 << 20) if "thp" in opts else 0
            mm = mmap.mmap(-1, size + extra + PAGE, flags=flags)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        if "file" not in opts:
            _libc.mprotect(ctypes.c_void_p(addr + len(mm) - PAGE), PAGE, 0)
        base_off = 0
        if "thp" in opts:
            base_off = (-addr) % (2 << 20)
            mm.madvise(MADV_HUGEPAGE, base_off, size)
        elif "file" not in opts and "shared" not in opts:
            mm.madvise(MADV_NOHUGEPAGE)
        arr = np.frombuffer(mm, dtype=np.uint8)[base_off:base_off + size]
        self.maps[name] = (mm, arr, addr + base_off)
        return f"{addr + base_off:#x}"

    def cmd_touch(self, name, step="1", first="0", count="0"):
        _, arr, _ = self.maps[name]
        return str(_touch(arr, int(step), int(first), int(count)))

    def cmd_read(self, name, step="1", first="0", count="0"):
        # Read one byte per page (no write): the access pattern under which
        # the missing TLB flush after marking shows most (docs/tlb.md).
        _, arr, _ = self.maps[name]
        first, count, step = int(first), int(count), int(step)
        view = arr[first * PAGE:(first + count) * PAGE:step * PAGE] if count else arr[first * PAGE::step * PAGE]
        return str(int(view.sum(dtype="uint64") >= 0) and view.size)

    def cmd_hot(self, name, first, count):
        self.cmd_stop()
        _, arr, _ = self.maps[name]
        self.stop_evt.clear()
        self.rounds = 0

        def loop():
            while not self.stop_evt.is_set():
                _touch(arr, 1, int(first), int(count))
                self.rounds += 1
        self.hot = threading.Thread(target=loop, daemon=True)
        self.hot.start()
        return ""

    def cmd_stop(self):
        if self.hot is not None:
            self.stop_evt.set()
            self.hot.join()
            self.hot = None
        return str(self.rounds)

    def cmd_unmap(self, name):
        mm, arr, _ = self.maps.pop(name)
        del arr
        try:
            mm.close()
        except BufferError:
            pass
        return ""

    def cmd_pid(self):
        return str(os.getpid())

    def cmd_sum(self, name):
        import numpy as np
        _, arr, _ = self.maps[name]
        return str(int(np.sum(arr, dtype=np.uint64)))

    def cmd_bind(self, name, node, first="0", count="0"):
        _, arr, addr = self.maps[name]
        npages = arr.size // PAGE
        first, count = int(first), int(count) or npages - int(first)
        mask = ctypes.c_ulong(1 << int(node))
        from ..kernel import syscalls     # here, not at the top: the child stays lean
        # mbind(2) has no glibc wrapper (it is libnuma's): called by number.
        # maxnode counts bits, and the kernel drops one: 64 bits -> 65.
        rc = syscalls.libc.syscall(syscalls.number("mbind"), ctypes.c_void_p(addr + first * PAGE), ctypes.c_ulong(count * PAGE),
                           ctypes.c_int(_MPOL_BIND), ctypes.byref(mask), ctypes.c_ulong(65),
                           ctypes.c_uint(_MPOL_MF_MOVE))
        if rc != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return ""

    def serve(self, rfile, wfile):
        for line in rfile:
            words = line.split()
            if not words:
                continue
            if words[0] == "exit":
                self.cmd_stop()
                wfile.write("ok\n")
                wfile.flush()
                return
            try:
                res = getattr(self, "cmd_" + words[0])(*words[1:])
                wfile.write(f"ok {res}\n".rstrip() + "\n")
            except Exception as e:   # report to the driver, keep serving
                wfile.write(f"err {type(e).__name__}: {e}\n")
            wfile.flush()


class Workload:
    """Driver side: ``with Workload() as w: a = w.map("x", 64); w.touch("x", 3)``."""

    #: "module:function" the child runs; subclasses with their own child
    #: (bench workloads) name theirs here.
    child = "idlemap.testing.workload:main"

    def __init__(self, python: str | None = None):
        module, func = self.child.split(":")
        self.proc = subprocess.Popen(
            [python or sys.executable, "-S", "-c",
             "import sys; sys.path[:0] = %r; from %s import %s; %s()"
             % ([p for p in sys.path if p], module, func, func)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.addrs: dict[str, int] = {}

    def call(self, *words) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply.startswith("ok"):
            raise RuntimeError(f"workload: {' '.join(map(str, words))}: {reply.strip() or 'no reply'}")
        return reply[2:].strip()

    def map(self, name: str, mib: float, *opts) -> int:
        a = int(self.call("map", name, mib, *opts), 16)
        self.addrs[name] = a
        return a

    def touch(self, name: str, step: int = 1, first: int = 0, count: int = 0) -> int:
        return int(self.call("touch", name, step, first, count))

    def read(self, name: str, step: int = 1, first: int = 0, count: int = 0) -> int:
        return int(self.call("read", name, step, first, count))

    def hot(self, name: str, first: int, count: int) -> None:
        self.call("hot", name, first, count)

    def stop(self) -> int:
        return int(self.call("stop"))

    def sum(self, name: str) -> int:
        return int(self.call("sum", name))

    def bind(self, name: str, node: int, first: int = 0, count: int = 0) -> None:
        self.call("bind", name, node, first, count)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
            except (RuntimeError, BrokenPipeError, OSError):
                pass
        # Unmapping a large mapping takes a moment: 10 s before SIGKILL.
        end(self.proc, grace_s=10)

    def kill(self) -> None:
        end(self.proc)

    def __enter__(self) -> "Workload":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    _Child().serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
