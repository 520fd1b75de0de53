"""idlemap refuses to touch a kdamond it did not start -- on the host, reading only.

This machine's kdamond belongs to the system: nothing here may write under
/sys/kernel/mm/damon.  Two safety nets make sure of it beyond idlemap's own
check: the CLI runs with IDLEMAP_CONTROL_WRITES=forbid (its one write shim
raises instead of writing), and the in-process test hands the session a
forbidding writer.  The assertions then prove the refusal came from
idlemap's ownership check (the sentence), and that every readable file
under /sys/kernel/mm/damon is byte-for-byte what it was.
"""
import os
import subprocess
import sys

import pytest

from idlemap.backends.damon import DamonBusy, DamonBusyAndMissing, DamonSession
from idlemap.kernel import damon_sysfs as ds
from idlemap.kernel.process import identify

pytestmark = pytest.mark.host


def busy_kdamonds():
    if not ds.available():
        pytest.skip("no DAMON sysfs interface here (CONFIG_DAMON_SYSFS is not set)")
    if os.geteuid() != 0:
        pytest.skip("reading DAMON's sysfs files needs root")
    running = [k for k in ds.describe() if k.state == "on"]
    if not running:
        pytest.skip("no kdamond is running here, so there is nothing to refuse "
                    "(needs CONFIG_DAMON_SYSFS and a kdamond started by someone else)")
    return running


@pytest.fixture
def target():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def test_cli_refuses_busy_damon_and_changes_nothing(target):
    running = busy_kdamonds()
    before = ds.snapshot()
    env = dict(os.environ, IDLEMAP_CONTROL_WRITES="forbid")
    p = subprocess.run([sys.executable, "-m", "idlemap", "wss", "--backend", "damon", str(target.pid), "0.2", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    after = ds.snapshot()
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    # Busy, and on a kernel without DAMON vaddr also unavailable: waiting cannot help there.
    vaddr_missing = "CONFIG_DAMON_VADDR is not set" in p.stderr
    assert p.returncode == (DamonBusyAndMissing.exit_code if vaddr_missing else DamonBusy.exit_code), p.stderr
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"idlemap: DAMON is busy: kdamond {running[0].index} (PID {running[0].pid}")
    assert p.stdout == ""
    assert after == before


def test_session_refuses_before_any_write(target):
    busy_kdamonds()
    before = ds.snapshot()
    writer = ds.ControlWriter(forbid=True)
    session = DamonSession([identify(target.pid)], writer=writer)
    with pytest.raises(DamonBusy):
        session.start()
    session.stop()                  # nothing to undo: must not write either
    assert writer.journal == []
    assert ds.snapshot() == before
