"""Child processes a test or a bench starts: static C workloads, built once
per version of their source, and the one way to end a child.

The C workloads (tests/system/hotset.c, schedule.c) are static so that
everything a process maps besides its data is under 1 MiB: no interpreter
and no shared libraries, whose pages other processes touch too (page_idle
tracks frames, so a neighbour's access to libc would count here).
"""
from __future__ import annotations

import os
import subprocess


class NoCompiler(RuntimeError):
    """gcc is missing, so a C workload cannot be built."""


def static_program(source: str, *cflags: str) -> str:
    """The executable of the C file ``source``, built with ``gcc -O2
    -static CFLAGS`` once per version of the source: named by the source's
    hash in the temporary directory, so every test and bench run of the
    same source reuses it, and an edited source is built afresh."""
    # Imported here, not at the top: the workload child imports this
    # package's workload module, which imports end() below, and should
    # carry as little as it can.
    import hashlib
    import shutil
    import tempfile
    with open(source, "rb") as f:
        tag = hashlib.sha256(f.read()).hexdigest()[:12]
    name = os.path.splitext(os.path.basename(source))[0]
    exe = os.path.join(tempfile.gettempdir(), f"idlemap-{name}-{tag}")
    if not os.path.exists(exe):
        if shutil.which("gcc") is None:
            raise NoCompiler(f"gcc is missing (scripts/setup.sh installs it): the {name} workload is a C program")
        # Built under a private name and renamed into place: two runs
        # building at once never execute a half-written file.
        tmp = f"{exe}.{os.getpid()}"
        subprocess.run(["gcc", "-O2", "-static", *cflags, "-o", tmp, source], check=True)
        os.replace(tmp, exe)
    return exe


def end(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """End a child we started, by its PID (never by name): give one that was
    told to exit ``grace_s`` seconds to do so, then SIGKILL it; reap it, and
    close our ends of its pipes (no zombie, no open descriptors left)."""
    if grace_s > 0 and proc.poll() is None:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    proc.kill()             # SIGKILL by PID, only if it has not been reaped (Popen checks)
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:         # a pipe whose reader is gone: unflushed bytes are moot
                pass
