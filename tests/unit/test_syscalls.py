"""kernel/syscalls.py: the numbers per architecture (checked against the C
headers where they are installed) and the one errno table of the calls
aimed at another process."""
from __future__ import annotations

import errno
import os
import re

import pytest

from idlemap.errors import AccessDenied, FeatureMissing, TargetExited
from idlemap.kernel import syscalls

HEADERS = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
           "aarch64": "/usr/include/asm-generic/unistd.h"}      # aarch64 uses the generic table


@pytest.mark.parametrize("machine", sorted(syscalls.NUMBERS))
def test_numbers_match_the_headers(machine):
    path = HEADERS[machine]
    if not os.path.exists(path):
        pytest.skip(f"no {path} (linux-libc-dev) to check against")
    text = open(path).read()
    for name, nr in syscalls.NUMBERS[machine].items():
        m = re.search(rf"#define __NR_{name}\s+(\d+)", text)
        assert m and int(m.group(1)) == nr, name


def test_unknown_architecture_is_refused_in_one_sentence():
    with pytest.raises(FeatureMissing) as e:
        syscalls.number("move_pages", "riscv64")
    assert e.value.exit_code == 69
    assert str(e.value) == ("idlemap does not know the move_pages syscall number on riscv64 "
                            "(it knows x86_64 and aarch64)")
    assert syscalls.number("move_pages", "x86_64") == 279 and syscalls.number("move_pages", "aarch64") == 239


@pytest.mark.parametrize("call,what,config", [
    ("move_pages", "the pages of PID 42", "CONFIG_MIGRATION"),
    ("process_madvise", "the memory of PID 42", "CONFIG_ADVISE_SYSCALLS, Linux 5.10+"),
    ("pidfd_open", "PID 42", "Linux 5.3+")])
def test_one_errno_table(call, what, config):
    for e in (errno.ESRCH, errno.EBADF):
        with pytest.raises(TargetExited):
            syscalls.raise_for(call, e, 42, what)
    with pytest.raises(AccessDenied) as d:
        syscalls.raise_for(call, errno.EPERM, 42, what)
    assert str(d.value) == (f"permission denied reading {what} for {call} (it needs CAP_SYS_NICE and "
                            "the right to ptrace the target: run as root)")
    with pytest.raises(FeatureMissing) as f:
        syscalls.raise_for(call, errno.ENOSYS, 42, what)
    assert f"this kernel has no {call} ({config} is not set)" in str(f.value)
    assert syscalls.raise_for(call, errno.EFAULT, 42, what) is None     # per-call meaning: the caller's


def test_hold_freed_memory_keeps_a_windows_arrays_from_faulting_again():
    """A window allocates and frees a few MiB of per-page arrays; with
    glibc's defaults the freed heap top is handed back and the next window
    faults its pages in again, after hold_freed_memory it is reused (minor
    faults over ten windows, in a fresh interpreter each way)."""
    import subprocess
    import sys
    code = ("import resource, sys\n"
            "import numpy as np\n"
            "from idlemap.kernel import syscalls\n"
            "if sys.argv[1] == '1':\n"
            "    assert syscalls.hold_freed_memory()\n"
            "def window():\n"
            "    a, b, c = (np.ones(1 << 20, np.uint8) for _ in range(3))\n"
            "    del a, b, c\n"
            "for _ in range(3):\n"
            "    window()\n"
            "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(10):\n"
            "    window()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    default, held = (int(subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                                        check=True).stdout) for arg in ("0", "1"))
    assert default > 10 * 256          # at least the 1 MiB trimmed each window, faulted again
    assert held < 64, (default, held)
