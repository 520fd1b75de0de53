"""PID reuse, made to happen for real on the host: inside a new PID
namespace (unshare --pid --mount-proc) the next PID can be chosen by
writing /proc/sys/kernel/ns_last_pid, so a target can exit and its PID be
given to a new process while idlemap watches.  idlemap must never report
the newcomer as the target it was asked about."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.host, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare (util-linux) to make a PID namespace")]

DRIVER = textwrap.dedent(r'''
    import json, subprocess, sys, time

    def idlemap(*args):
        return subprocess.Popen([sys.executable, "-m", "idlemap", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def reuse(pid):
        """A new process with PID ``pid`` (the old one must be reaped)."""
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        b = subprocess.Popen(["sleep", "1000"])
        assert b.pid == pid, (b.pid, pid)
        return b

    out = {}
    for cmd in ("wss", "top"):
        a = subprocess.Popen(["sleep", "1000"])
        args = (["wss", str(a.pid), "1.5", "3", "--json", "--backend", "clear_refs"] if cmd == "wss" else
                ["top", "1.5", "3", "--json", "--pids", str(a.pid)])
        p = idlemap(*args)
        first = p.stdout.readline()          # the first window: the target as it was
        a.kill(); a.wait()
        b = reuse(a.pid)
        rest, err = p.communicate(timeout=60)
        b.kill(); b.wait()
        out[cmd] = {"pid": a.pid, "rc": p.returncode, "stderr": err,
                    "rows": [json.loads(x) for x in (first + rest).splitlines() if x.startswith("{")]}
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def reused(tmp_path_factory):
    d = tmp_path_factory.mktemp("pidns")
    (d / "driver.py").write_text(DRIVER)
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(d / "driver.py")],
                       capture_output=True, text=True, timeout=180, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_wss_stops_with_one_sentence_when_the_pid_is_reused(reused):
    w = reused["wss"]
    lines = [x for x in w["stderr"].splitlines() if x.strip()]
    assert w["rc"] == 1 and len(lines) == 1, w
    assert "now belongs to a different process" in lines[0] or "exited during the scan" in lines[0]
    samples = [r for r in w["rows"] if r["schema"].startswith("idlemap.wss/")]
    assert len(samples) == 1                    # the target's window, none of the newcomer's


def test_top_drops_a_pid_that_came_back_as_another_process(reused):
    t = reused["top"]
    rounds = [r for r in t["rows"] if r["schema"].startswith("idlemap.top/")]
    assert t["rc"] == 0 and len(rounds) == 3, t
    pids = [[p["pid"] for p in r["processes"]] for r in rounds]
    assert pids[0] == [t["pid"]]                # the target, while it lived
    assert pids[1:] == [[], []]                 # the newcomer under its PID: never shown
