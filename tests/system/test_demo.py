"""`idlemap demo`, as the README runs it: here if this kernel has page_idle,
otherwise inside the test VM (which is then exercised from the host); and
in the VM, a demo stopped with Ctrl-C."""
import json
import os
import signal
import subprocess
import sys

import pytest

from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.testing.child import end


def test_demo_measures_known_hot_set():
    p = subprocess.run([sys.executable, "-m", "idlemap", "demo", "--size-mib", "256", "--hot-mib", "64",
                        "--windows", "2", "--interval", "0.5", "--json"],
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    pi = [r for r in rows if r["backend"] == "page_idle"]
    cr = [r for r in rows if r["backend"] == "clear_refs"]
    assert len(pi) == 2 and len(cr) == 1
    for r in pi:
        assert abs(r["error_pct"]) <= 1.0
        assert r["hot_pages_seen"] == r["hot_pages"]
        assert r["cold_pages_idle"] == r["cold_pages"]
    assert abs(cr[0]["error_pct"]) <= 1.0


@pytest.mark.vm
@pytest.mark.skipif(not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")
def test_demo_stops_between_windows_on_ctrl_c():
    """The demo runs the one round loop (rounds.paced): a first Ctrl-C ends
    it between windows, and it still prints what it has and ends its
    workload: exit 130, no clear_refs window, no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "demo", "--here", "--size-mib", "64", "--hot-mib", "16",
                          "--windows", "1000", "--interval", "0.5"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = []
        while not (head and head[-1].strip().startswith("1 ")):      # the first window's row
            line = p.stdout.readline()
            assert line, p.stderr.read()[-3000:]
            head.append(line)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        end(p)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "stopped: the clear_refs comparison was not run." in out, out
    assert "hot loop made" in out and "data mapping, one character per" in out, out
