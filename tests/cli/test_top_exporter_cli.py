"""The real main() for `top` and `exporter`: help with examples, bad input
as one sentence with a non-zero exit, never a traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from idlemap.cli import main
from idlemap.kernel import page_idle


def run_cli(*args, timeout=120):
    p = subprocess.run([sys.executable, "-m", "idlemap", *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def one_sentence(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and lines[0].startswith("idlemap: ")
    return lines[0]


@pytest.mark.parametrize("cmd", ["top", "exporter"])
def test_help_has_examples(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"idlemap {cmd}" in out


@pytest.mark.parametrize("args,words", [
    (["top", "0"], "interval must be a number of seconds in (0,"),
    (["top", "x"], "interval must be a number of seconds"),
    (["top", "1", "2", "3"], "too many arguments"),
    (["top", "--sort", "pss"], "--sort pss needs --pss"),
    (["top", "--rows", "-1"], "argument --rows: must be"),
    (["top", "--pids", "abc"], "bad PID list"),
    (["top", "--pids", "0"], "bad PID list"),
    (["top", "--pids", "4194303"], "no process with PID 4194303"),
    (["top", "--tree", "4194303"], "no process with PID 4194303"),
    (["exporter", "--interval", "0"], "argument --interval: must be"),
    (["exporter", "--top-n", "-2"], "argument --top-n: must be"),
    (["exporter", "--listen", ":9466"], "give the address too"),
    (["exporter", "--listen", "127.0.0.1:99999"], "port must be"),
    (["exporter", "--listen", "nope"], "expected HOST:PORT"),
])
def test_bad_input_one_sentence(args, words, capsys):
    rc = main(args)
    assert rc != 0
    line = one_sentence(capsys.readouterr().err)
    assert words in line


@pytest.mark.skipif(page_idle.available(), reason="this kernel has page_idle")
@pytest.mark.parametrize("cmd", ["top", "exporter"])
def test_page_idle_missing_names_config(cmd, capsys):
    rc = main([cmd, "--backend", "page_idle", "--pids", str(os.getpid())])
    assert rc == 69
    assert "CONFIG_IDLE_PAGE_TRACKING" in one_sentence(capsys.readouterr().err)


def test_exporter_port_in_use_one_sentence():
    pytest.importorskip("prometheus_client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc, _, err = run_cli("exporter", "--listen", f"127.0.0.1:{port}", "--pids", str(os.getpid()),
                             "--backend", "clear_refs")
    assert rc == 2
    assert "cannot listen on 127.0.0.1:" in one_sentence(err)


def test_top_json_lines_for_our_own_tree():
    rc, out, err = run_cli("top", "0.2", "2", "--json", "--tree", str(os.getpid()), "--backend", "clear_refs",
                           "--cgroups")
    assert rc == 0, err
    import json
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["backend"] == "clear_refs" and "cgroups" in r for r in rows)
    assert any(p["pid"] == os.getpid() for p in rows[-1]["processes"])
