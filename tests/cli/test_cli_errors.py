"""The real main(): bad input gets one sentence and a non-zero exit, never a traceback."""
import json
import os
import subprocess
import sys

import pytest

from idlemap.cli import main


def run_cli(*args):
    """Run `python -m idlemap ARGS` as a real process."""
    p = subprocess.run([sys.executable, "-m", "idlemap", *args], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


def run_main_as(uid, args):
    """Fork, drop to ``uid`` and call the real main() there (the interpreter
    under /root may not be executable by other users, so no exec)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 2)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sys.stderr = os.fdopen(2, "w")
            rc = main(args)
            sys.stderr.flush()
        except BaseException:
            rc = 99
        os._exit(rc)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def one_sentence(stderr):
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("idlemap: ")
    return lines[0]


def test_unknown_pid(capsys):
    assert main(["wss", "999999999", "0.1", "1"]) == 1
    err = capsys.readouterr().err
    assert one_sentence(err) == "idlemap: no process with PID 999999999"


@pytest.mark.parametrize("args, needle", [
    (["wss", "abc"], "PID must be a number"),
    (["wss"], "give the target's PID"),
    (["wss", "1", "0"], "interval must be a number of seconds in (0,"),
    (["wss", "1", "x"], "interval must be a number of seconds"),
    # -o into a temporary directory: never the machine's own /dev (issue 17)
    (["bitmap", "1", "--range", "5-3", "-o", "{tmp}/b"], "END must be above START"),
    (["wss", "1", "--backend", "page_idle"], "CONFIG_IDLE_PAGE_TRACKING"),
])
def test_usage_errors(capsys, tmp_path, args, needle):
    if "page_idle" in args and os.path.exists("/sys/kernel/mm/page_idle/bitmap"):
        pytest.skip("this kernel has page_idle")
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert rc != 0
    assert needle in one_sentence(capsys.readouterr().err)


def test_pid_reuse_is_one_sentence():
    from idlemap.errors import PidReused
    from idlemap.kernel.process import ProcessId, check_same, identify
    me = identify(os.getpid())
    older = ProcessId(me.pid, me.start_ticks - 1, me.comm, me.uid)
    with pytest.raises(PidReused) as e:
        check_same(older)
    assert str(e.value) == (f"PID {me.pid} now belongs to a different process "
                            "(it exited and the PID was reused)")


def test_non_root_gets_one_sentence():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid")
    # A non-root user asking about PID 1 (root's): clear_refs is root's to write.
    rc, err = run_main_as(65534, ["wss", "1", "0.1", "1"])
    assert rc == 77
    assert "permission denied" in one_sentence(err)


def test_doctor_json():
    rc, out, err = run_cli("doctor", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert set(d) == {"schema", "features", "commands", "kmod", "auto", "auto_backend"} and d["schema"] == "idlemap.doctor/1"
    assert d["features"]["clear_refs"] is True
    # The module in one line (loaded / buildable / why not), and what auto picks here and why.
    assert d["kmod"].startswith("idlemap module: ") and d["auto"].startswith("--backend auto here: ")
    assert d["auto_backend"] in ("kmod", "page_idle", "clear_refs")     # clear_refs runs on every kernel
    assert ("loaded" in d["kmod"]) == d["features"]["kmod_loaded"] or "not loaded" in d["kmod"]
    from idlemap.cli import COMMANDS
    by = {c["command"]: c for c in d["commands"]}
    assert list(by) == list(COMMANDS)               # every command, none unknown to the table
    assert all(c["works"] in (True, False) for c in by.values())
    # This host: no page_idle, so wss works per mapping and says what would be better.
    assert by["wss"]["works"] and "clear_refs" in by["wss"]["how"] or by["wss"]["best"] == ""
    assert by["report"] == {"command": "report", "works": True, "how": "on any record file, offline",
                            "missing": [], "instead": "", "best": ""}


def test_help_has_examples():
    rc, out, _ = run_cli("wss", "--help")
    assert rc == 0 and "examples:" in out and "idlemap wss" in out


def test_per_page_refusal_offers_only_what_the_command_can_use(capsys):
    """advise/bitmap need a page map: their refusal must not suggest
    `--backend clear_refs` (they cannot use it); wss can, and says so."""
    from idlemap.backends import probe
    if probe().page_idle or os.path.exists("/dev/idlemap"):
        pytest.skip("per-page tracking runs on this kernel: nothing to refuse")
    pid = str(os.getppid())
    for args in (["advise", pid, "0.1", "2"], ["advise", pid, "--backend", "page_idle"]):
        assert main(args) == 69
        line = one_sentence(capsys.readouterr().err)
        assert "clear_refs" not in line and "idlemap demo" in line, line
    assert main(["wss", pid, "--backend", "page_idle", "0.1", "1"]) == 69
    assert "`--backend clear_refs` gives exact totals per mapping" in one_sentence(capsys.readouterr().err)


def test_kmod_unload_when_not_loaded(capsys):
    if os.path.isdir("/sys/module/idlemap_kmod"):
        pytest.skip("the idlemap module is loaded here")
    assert main(["kmod", "unload"]) == 2
    assert one_sentence(capsys.readouterr().err) == "idlemap: the idlemap module is not loaded"


@pytest.mark.parametrize("module, args, needle", [
    ("prometheus_client", ["exporter", "--listen", "127.0.0.1:0", "--pids", "1"],
     "pip install 'idlemap[exporter]'"),
    ("pyfuse3", ["mount", "-f", "{tmp}/m"], "pip install 'idlemap[fuse]'"),
])
def test_missing_library_is_unavailable(module, args, needle, tmp_path):
    """Without an optional library: exit 69 (EX_UNAVAILABLE) and the pip line."""
    (tmp_path / "m").mkdir()
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from idlemap.cli import main; raise SystemExit(main({[a.replace('{tmp}', str(tmp_path)) for a in args]!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 69, p.stderr
    assert needle in one_sentence(p.stderr)


def test_no_command_is_a_usage_error():
    rc, out, err = run_cli()
    assert rc == 2 and out.startswith("usage: idlemap")
    assert err == "idlemap: give a command (see 'idlemap --help')\n"


@pytest.mark.parametrize("value, needle", [("9" * 400, "from 0 to"), ("9" * 400 + "K", "from 0 to"),
                                           ("2000T", "from 0 to 1024T")])
def test_size_beyond_any_float_is_a_usage_error(capsys, value, needle):
    """A size of 309+ digits is inf as a float: one sentence, not exit 70."""
    assert main(["tier", "999999", "--fast", "0", "--slow", "1", "--fast-capacity", value]) == 2
    assert needle in one_sentence(capsys.readouterr().err)
