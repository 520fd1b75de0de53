"""`idlemap wss` through the real main() and as a real process, on the host kernel."""
import json
import signal
import subprocess
import sys

from idlemap.cli import main
from idlemap.testing.workload import Workload

MiB = 1 << 20


def test_json_lines_with_schema(capsys):
    with Workload() as w:
        a = w.map("a", 8)
        w.touch("a")
        assert main(["wss", str(w.pid), "0.05", "2", "--json", "--by-mapping"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["schema"] for l in lines] == ["idlemap.wss/2"] * 2 + ["idlemap.wss.summary/2"]
    row = lines[0]
    assert row["pid"] == w.pid and row["rss_bytes"] >= 8 * MiB and row["est_s"] > 0
    mine = [m for m in row["by_mapping"] if int(m["start"], 16) <= a < int(m["end"], 16)]
    assert mine and mine[0]["rss_bytes"] == 8 * MiB and mine[0]["kind"] == "anon"


def test_gregg_columns_cumulative_and_profile(capsys):
    with Workload() as w:
        w.map("a", 4)
        w.touch("a")
        assert main(["wss", "-p", str(w.pid), "0.05", "2", "-C"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[1].split() == ["Est(s)", "RSS(MiB)", "PSS(MiB)", "Ref(MiB)", "Ref%"]
        # Cumulative: every window starts at the one mark, so each row's end
        # time minus its length is the same instant (no bound on how long a
        # window took: a loaded machine may stretch any of them).
        assert main(["wss", "-p", str(w.pid), "0.05", "2", "-C", "--json"]) == 0
        rows = [json.loads(l) for l in capsys.readouterr().out.splitlines() if '"idlemap.wss/' in l]
        starts = [r["time"] - r["est_s"] for r in rows]
        assert len(rows) == 2 and rows[1]["est_s"] > rows[0]["est_s"] and abs(starts[1] - starts[0]) < 0.01
        assert main(["wss", str(w.pid), "-P", "4", "--profile-base", "0.01"]) == 0
        rows = capsys.readouterr().out.splitlines()[2:6]
        ests = [float(r.split()[0]) for r in rows]
        # power-of-two windows of at least 0.01, 0.02, 0.04, 0.08 s (plus scan time)
        assert len(ests) == 4 and all(e >= 0.01 * 2 ** i for i, e in enumerate(ests))


def test_ctrl_c_prints_summary():
    with Workload() as w:
        w.map("a", 4)
        p = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", str(w.pid), "0.05"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rows = 0
        while rows < 3:
            line = p.stdout.readline()
            assert line
            rows += line.strip()[:1].isdigit()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    # the summary is printed, and the exit status says the run was cut short
    assert p.returncode == 130, err
    assert "windows of" in out and "Traceback" not in err
