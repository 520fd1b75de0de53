"""`idlemap demo`, as the README runs it: here if this kernel has page_idle,
otherwise inside the test VM (which is then exercised from the host)."""
import json
import subprocess
import sys


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
