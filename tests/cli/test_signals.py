"""Issue 17: Ctrl-C (SIGINT) or SIGTERM at any moment of a real
``python -m idlemap`` process -- during imports and argument parsing as
well as while measuring -- exits 130 with no traceback, and what was
gathered is kept.

"Any moment" starts when idlemap's code runs: cli.main installs its
handlers first thing (it catches SIGTERM from then on, which the test
watches for in /proc/PID/status).  Before that the interpreter is still
starting up (site, ~50-100 ms here) and no program can answer a signal.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from idlemap.testing.child import end
from idlemap.testing.workload import Workload


def wait_for_handlers(pid: int, timeout: float = 30.0) -> None:
    """Until the process catches SIGTERM: main() has installed its handlers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            caught = 0
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.001)
    raise AssertionError("idlemap never installed its signal handlers")


def run_and_signal(argv: list[str], sig: int, delay: float,
                   launcher: tuple[str, ...] = (sys.executable, "-m", "idlemap")) -> tuple[int, str, str]:
    p = subprocess.Popen([*launcher, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_handlers(p.pid)
        time.sleep(delay)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        end(p)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def target():
    with Workload() as w:
        w.map("a", 8)
        w.touch("a")
        yield w.pid


# 0: imports and argument parsing (the command's module, numpy); later:
# the backend's set-up and the first windows.
DELAYS = [0.0, 0.02, 0.1, 0.3, 0.6, 1.5]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", DELAYS)
def test_wss_interrupted_any_moment(target, sig, delay):
    rc, _, err = run_and_signal(["wss", str(target), "0.2", "--backend", "clear_refs"], sig, delay)
    assert rc == 130, (rc, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.6, 2.0])
def test_record_interrupted_keeps_the_rounds(target, tmp_path, delay):
    from idlemap.formats.record import open_record
    path = tmp_path / "r.rec"
    rc, out, err = run_and_signal(["record", str(target), "-i", "0.1", "--backend", "clear_refs",
                                   "--tlb-flush", "none", "-o", str(path)], signal.SIGINT, delay)
    assert rc == 130, (rc, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if path.exists():                       # interrupted after the header was written
        rec = open_record(path)
        assert rec.complete and rec.end_reason == "interrupted"
        if delay >= 2.0:
            assert len(rec) >= 1 and "rounds in" in out
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_report_interrupted_while_importing(tmp_path, delay):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
    import recgen
    rec = tmp_path / "r.rec"
    recgen.write(rec, recgen.changing_rounds(12))
    rc, _, err = run_and_signal(["report", str(rec), "heatmap", "--cols", "40", "--rows", "10"],
                                  signal.SIGINT, delay)
    # a report this small may finish before the signal lands: 0 then
    assert rc in (0, 130), (rc, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_console_script_interrupted(target, delay):
    """The `idlemap` console script (entry point idlemap.cli:main) too."""
    exe = shutil.which("idlemap")
    if exe is None:
        pytest.skip("the idlemap console script is not installed (scripts/setup.sh installs it)")
    rc, _, err = run_and_signal(["wss", str(target), "0.2", "--backend", "clear_refs"], signal.SIGINT, delay,
                                  launcher=(exe,))
    assert rc == 130, (rc, err)
    assert "Traceback" not in err, err
