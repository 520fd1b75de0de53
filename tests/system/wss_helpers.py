"""`idlemap wss` run in-process, as the system tests read it."""
import json

from idlemap.cli import main


def wss_json(capsys, pid, *extra, interval="0.2", count="2"):
    """The window rows (idlemap.wss/2) of `idlemap wss PID INTERVAL COUNT --json`."""
    capsys.readouterr()
    rc = main(["wss", str(pid), interval, count, "--json", *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [json.loads(x) for x in out.splitlines() if x.strip()]
    return [r for r in rows if r["schema"] == "idlemap.wss/2"]


def wss_first_line(capsys, pid) -> str:
    """The first line of one short text `idlemap wss` window: which backend
    it runs with, and why."""
    capsys.readouterr()
    rc = main(["wss", str(pid), "0.1", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out.splitlines()[0]
