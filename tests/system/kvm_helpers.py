"""A real KVM guest for tests: kvmguest.c, a minimal VMM whose guest writes
a hot set of pages forever (its stores go through KVM's nested page tables,
never through the VMM's own)."""
import os
import select
import struct
import subprocess
import time
from pathlib import Path

import pytest

from idlemap.kernel.maps import PAGE_SIZE
from idlemap.kernel.tasks import parse_stat
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


LIMIT_S = 300.0      # bounds on a guest that stopped or never started; not timings


class KvmGuest:
    """kvmguest HOT_PAGES as our child: ``pid``, and ``addr``/``pages``, the
    hot set in the VMM's address space.  The guest counts its own passes
    over the hot set (``count``); every wait is bounded, and a guest that
    stops is reported with what its threads were doing."""

    def __init__(self, pages: int):
        self.proc = subprocess.Popen([static_program(str(SOURCE)), str(pages)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        ready, _, _ = select.select([self.proc.stdout], [], [], LIMIT_S)
        line = self.proc.stdout.readline().split() if ready else []
        if not line or line[0] != "ready":
            why = self.state()
            end(self.proc)
            pytest.fail(f"kvmguest did not start within {LIMIT_S:g} s: {why}")
        self.addr, self.pages = int(line[1], 16), int(line[2])

    @property
    def start(self) -> int:
        return self.addr

    @property
    def end_addr(self) -> int:
        return self.addr + self.pages * PAGE_SIZE

    def state(self) -> str:
        """What the VMM is doing, for a failure message: its exit status and
        stderr if it ended, else each thread's state and wait channel."""
        if self.proc.poll() is not None:
            return f"exited with status {self.proc.returncode}: {self.proc.stderr.read().strip()}"
        out = []
        for tid in sorted(os.listdir(f"/proc/{self.pid}/task")):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    st = parse_stat(f.read())[1][0]
                with open(f"/proc/{self.pid}/task/{tid}/wchan") as f:
                    out.append(f"thread {tid} {st} in {f.read() or '-'}")
            except OSError:
                continue
        return "; ".join(out) or "no threads"

    def count(self) -> int:
        """The guest's pass counter now, read through /proc/PID/mem from the
        page below the hot set (so no hot page is touched by reading it)."""
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(self.addr - PAGE_SIZE)
            return struct.unpack("<I", f.read(4))[0]

    def passes(self, n: int) -> int:
        """Wait until the guest has made at least ``n`` passes in all."""
        deadline = time.monotonic() + LIMIT_S
        while (done := self.count()) < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kvmguest made {done} passes, not {n}: {self.state()}")
            time.sleep(0.01)
        return done

    def more_passes(self, n: int) -> int:
        """Wait until the guest has written its whole hot set ``n`` more
        times (at least n-1 whole passes lie inside the wait); returns how
        many it made."""
        first = self.count()
        return self.passes(first + n) - first

    def close(self):
        end(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
