"""A real KVM guest for tests: kvmguest.c, a minimal VMM whose guest writes
a hot set of pages forever (its stores go through KVM's nested page tables,
never through the VMM's own)."""
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from idlemap.kernel.maps import PAGE_SIZE
from idlemap.testing.child import end, static_program

SOURCE = Path(__file__).with_name("kvmguest.c")


def kvm_usable_reason() -> str | None:
    """Why a KVM VM cannot be created here, as a skip reason naming the
    CONFIG_, or None if it can."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm: CONFIG_KVM (with CONFIG_KVM_AMD or CONFIG_KVM_INTEL) is not set"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


class KvmGuest:
    """kvmguest HOT_PAGES as our child: ``pid``, and ``addr``/``pages``, the
    hot set in the VMM's address space; ``passes`` waits for the guest to
    have written its hot set at least that many times."""

    def __init__(self, pages: int):
        self.proc = subprocess.Popen([static_program(str(SOURCE)), str(pages)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            err = self.proc.stderr.read().strip()
            end(self.proc)
            pytest.fail(f"kvmguest did not start: {err}")
        self.pid = self.proc.pid
        self.addr, self.pages = int(line[1], 16), int(line[2])
        self.done = 0

    @property
    def start(self) -> int:
        return self.addr

    @property
    def end_addr(self) -> int:
        return self.addr + self.pages * PAGE_SIZE

    def passes(self, n: int) -> int:
        """Block until at least ``n`` passes are done (n a power of two)."""
        while self.done < n:
            line = self.proc.stdout.readline().split()
            if not line:
                raise AssertionError(f"kvmguest stopped: {self.proc.stderr.read().strip()}")
            self.done = int(line[1])
        return self.done

    def count(self) -> int:
        """The guest's pass counter now, read through /proc/PID/mem from the
        page below the hot set (so no hot page is touched by reading it)."""
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(self.addr - PAGE_SIZE)
            return struct.unpack("<I", f.read(4))[0]

    def more_passes(self, n: int, limit_s: float = 600.0) -> int:
        """Wait until the guest has written its whole hot set ``n`` more
        times (at least n-1 whole passes lie inside the wait); returns how
        many it made.  ``limit_s`` bounds a guest that stopped; not a timing."""
        first = self.count()
        deadline = time.monotonic() + limit_s
        while self.count() < first + n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kvmguest made {self.count() - first} passes, not {n}: "
                                     f"{self.proc.stderr.read().strip() if self.proc.poll() is not None else 'stuck'}")
            time.sleep(0.01)
        return self.count() - first

    def close(self):
        end(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
