"""Issue 17: every numeric option and every path option of every command,
fed what a hostile or careless user would type.

The options are found by walking each command's real parser (validate's
and outputs' ``type=`` functions carry a mark), so an option added later
is covered -- and one added with a bare ``type=int``/``float`` fails
test_no_bare_numeric_types.  Each bad value must give exit 2 and exactly
one line on stderr starting ``idlemap:``, never a traceback.

Hostile paths are nodes made in a temporary directory (mknod, mkfifo),
never the machine's own /dev: the bug being tested used to replace
whatever -o pointed at.
"""
from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys

import pytest

from idlemap.cli import COMMANDS, build_parser, main

BAD_NUMBERS = ["nan", "inf", "-inf", "-3", "1e308", "9" * 30, "", "1x"]


def _actions(cmd: str):
    parser = build_parser(cmd)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[cmd]._actions


def _options(mark: str) -> list[tuple[str, str]]:
    out = []
    for cmd in COMMANDS:
        for a in _actions(cmd):
            if getattr(a.type, mark, False):
                out.append((cmd, max(a.option_strings, key=len) if a.option_strings else a.dest))
    return out


NUMERIC = _options("idlemap_numeric")
PATHS = _options("idlemap_path")


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("idlemap: "), err
    return lines[0]


def test_the_tables_cover_every_command_with_numbers_or_paths():
    with_numbers = {c for c, _ in NUMERIC}
    assert {"wss", "record", "hot", "heatmap", "report", "reclaim", "tier", "top", "exporter",
            "demo", "bitmap"} <= with_numbers
    assert {("record", "--output"), ("hot", "--png"), ("heatmap", "--png"), ("report", "--png"),
            ("bitmap", "--output"), ("mount", "--log"), ("hot", "--output"), ("heatmap", "--output")} <= set(PATHS)


def test_no_bare_numeric_types():
    """Every int/float option goes through idlemap.validate (finite, range, unit)."""
    bare = [(cmd, a.option_strings or a.dest) for cmd in COMMANDS for a in _actions(cmd)
            if a.type in (int, float)]
    assert not bare


@pytest.mark.parametrize("cmd, opt", NUMERIC, ids=[f"{c}{o}" for c, o in NUMERIC])
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_bad_number_is_one_sentence(cmd, opt, value, capsys):
    # "--opt=value": a value starting with "-" is still the option's value.
    assert main([cmd, f"{opt}={value}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert opt in line and "must be" in line


@pytest.mark.parametrize("cmd, opt", NUMERIC, ids=[f"{c}{o}" for c, o in NUMERIC])
def test_finite_in_range_number_is_accepted(cmd, opt):
    a = next(a for a in _actions(cmd) if opt in a.option_strings)
    good = a.default if a.default is not None else 1
    assert a.type(str(good)) == good


@pytest.mark.parametrize("argv, name", [
    (["wss", "1", "{v}"], "interval"), (["wss", "1", "1", "{v}"], "count"),
    (["top", "{v}"], "interval"), (["top", "1", "{v}"], "count"),
])
@pytest.mark.parametrize("value", ["nan", "inf", "-3", "0", "1e308", "9" * 30, "x"])
def test_bad_positional_number(argv, name, value, capsys):
    assert main([a.replace("{v}", value) for a in argv]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"idlemap: {name} must be")


def test_profile_windows_longer_than_a_week(capsys):
    assert main(["wss", str(os.getpid()), "-P", "32", "--profile-base", "1"]) == 2
    assert "longer than a week" in one_line(capsys.readouterr().err)


# -- paths ---------------------------------------------------------------------
@pytest.fixture
def hostile(tmp_path):
    """A character device (mknod 1,3: the null device), a FIFO, a symlink to
    a regular file, a directory, and a path in a missing directory -- all
    inside tmp_path."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    nodes = {"dev": tmp_path / "null", "fifo": tmp_path / "fifo", "link": tmp_path / "link",
             "dir": tmp_path / "d", "missing": tmp_path / "no" / "such" / "f", "root": "/"}
    os.mknod(nodes["dev"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(nodes["fifo"])
    (tmp_path / "target").write_bytes(b"keep me")
    os.symlink(tmp_path / "target", nodes["link"])
    os.mkdir(nodes["dir"])
    yield nodes
    # Nothing was replaced, moved aside, or left behind.
    assert stat.S_ISCHR(os.lstat(nodes["dev"]).st_mode)
    assert os.lstat(nodes["dev"]).st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(nodes["fifo"]).st_mode)
    assert stat.S_ISLNK(os.lstat(nodes["link"]).st_mode)
    assert (tmp_path / "target").read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["d", "fifo", "link", "null", "target"]
    assert os.listdir(nodes["dir"]) == []


def _path_argv(cmd: str, opt: str, path: str) -> list[str]:
    # Only the path option: its check runs while parsing, before anything
    # that needs a PID, a kernel feature or a record file.
    return [cmd, opt, str(path)]


@pytest.mark.parametrize("cmd, opt", PATHS, ids=[f"{c}{o}" for c, o in PATHS])
@pytest.mark.parametrize("which", ["dev", "fifo", "link", "dir", "missing", "root"])
def test_hostile_output_path_refused(cmd, opt, which, hostile, capsys):
    assert main(_path_argv(cmd, opt, hostile[which])) == 2
    line = one_line(capsys.readouterr().err)
    want = {"dev": "it is a character device", "fifo": "it is a FIFO", "link": "it is a symbolic link",
            "dir": "it is a directory", "root": "it is a directory",
            "missing": "its directory does not exist"}[which]
    assert want in line


@pytest.mark.parametrize("cmd, opt", PATHS, ids=[f"{c}{o}" for c, o in PATHS])
def test_empty_output_path_refused(cmd, opt, capsys):
    assert main([cmd, f"{opt}="]) == 2
    assert "is empty" in one_line(capsys.readouterr().err)


# -- writes that fail after parsing: the record writer and PNGs, for real ---------
@pytest.fixture
def target():
    from idlemap.testing.workload import Workload
    with Workload() as w:
        w.map("a", 2)
        w.touch("a")
        yield w.pid


def _record(target, path) -> list[str]:
    return ["record", str(target), "-n", "1", "-i", "0.05", "--backend", "clear_refs", "--tlb-flush", "none",
            "-o", str(path)]


@contextlib.contextmanager
def tmpfs(where, opts: str):
    os.makedirs(where, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "none", str(where)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs / sets chattr +i: root only")


@needs_root
def test_record_into_read_only_file_system(tmp_path, target, capsys):
    with tmpfs(tmp_path / "ro", "size=64k,ro"):
        assert main(_record(target, tmp_path / "ro" / "x.rec")) == 73
        assert "read-only file system" in one_line(capsys.readouterr().err)


@needs_root
def test_record_onto_a_full_device(tmp_path, target, capsys):
    with tmpfs(tmp_path / "full", "size=16k") as d:
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\1" * 4096)
        os.close(fd)
        assert main(_record(target, d / "x.rec")) == 73
        assert "no space left" in one_line(capsys.readouterr().err)
        assert sorted(os.listdir(d)) == ["filler"]       # no temporary file left behind


@needs_root
def test_record_over_an_immutable_file(tmp_path, target, capsys):
    p = tmp_path / "x.rec"
    p.write_bytes(b"immutable")
    if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode:
        pytest.skip("chattr +i not supported here")
    try:
        assert main(_record(target, p)) == 77
        assert "permission denied writing the record" in one_line(capsys.readouterr().err)
        assert p.read_bytes() == b"immutable"
    finally:
        subprocess.run(["chattr", "-i", str(p)], check=False)
        subprocess.run(["chattr", "-i", str(tmp_path)], check=False)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_record_to_proc_version(target, capsys):
    before = open("/proc/version").read()
    rc = main(_record(target, "/proc/version"))
    assert rc == 73, rc
    assert "does not take new files" in one_line(capsys.readouterr().err)
    assert open("/proc/version").read() == before


def test_repeated_record_keeps_every_recording(tmp_path, target, capsys):
    from idlemap.formats.record import open_record
    p = tmp_path / "app.rec"
    for _ in range(3):
        assert main(_record(target, p)) == 0
    assert sorted(os.listdir(tmp_path)) == ["app.rec", "app.rec.1", "app.rec.2"]
    for name in os.listdir(tmp_path):
        assert len(open_record(tmp_path / name)) == 1


@needs_root
@pytest.mark.parametrize("opts, words", [("size=64k,ro", "read-only file system"), ("size=8k", "no space left")])
def test_png_onto_read_only_or_full_file_system(tmp_path, opts, words, capsys):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
    import recgen
    rec = tmp_path / "r.rec"
    recgen.write(rec, recgen.changing_rounds(4))
    with tmpfs(tmp_path / "fs", opts) as d:
        assert main(["report", str(rec), "heatmap", "--png", str(d / "h.png")]) == 73
        assert words in one_line(capsys.readouterr().err)
        assert os.listdir(d) == []                  # no partial PNG, no temporary file


@pytest.mark.parametrize("argv, code", [
    (["wss", "0", "1", "1"], 2), (["wss", "-p", "0", "1", "1"], 2),
    (["wss", "-5", "1", "1"], 2), (["wss", "-p", "-5", "1", "1"], 2),
    (["wss", "99999999999", "1", "1"], 1), (["wss", "-p", "99999999999", "1", "1"], 1),
])
def test_pid_as_argument_or_option_same_code(argv, code, capsys):
    assert main(argv) == code
    one_line(capsys.readouterr().err)


def test_missing_directory_is_the_same_code_for_o_and_png(tmp_path, capsys):
    codes = {main([cmd, opt, str(tmp_path / "no" / "f")]) for cmd, opt in PATHS}
    assert codes == {2}
    capsys.readouterr()


# -- kernel threads: the same answer from every command -------------------------------
KTHREAD_ARGV = [["wss", "{p}", "0.1", "1"], ["record", "{p}", "-n", "1", "-o", "{tmp}/k.rec"],
                ["hot", "{p}", "-n", "1"], ["heatmap", "{p}", "-n", "1"], ["bitmap", "{p}", "-o", "{tmp}/b"],
                ["reclaim", "{p}", "--cold-for", "1"], ["tier", "{p}", "--fast", "0", "--slow", "1"]]


@pytest.mark.parametrize("argv", KTHREAD_ARGV, ids=[a[0] for a in KTHREAD_ARGV])
def test_kernel_thread_is_exit_2_everywhere(argv, tmp_path, capsys):
    kthreadd = 2
    with open(f"/proc/{kthreadd}/stat") as f:
        if "(kthreadd)" not in f.read():
            pytest.skip("PID 2 is not kthreadd here (a PID namespace)")
    rc = main([a.replace("{p}", str(kthreadd)).replace("{tmp}", str(tmp_path)) for a in argv])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "kernel thread" in line, line
    assert os.listdir(tmp_path) == []


def test_exit_code_table_in_readme():
    from idlemap.errors import EXIT_CODES
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in EXIT_CODES:
        assert f"| {code} |" in section, code


@pytest.mark.parametrize("argv", [["mount", ""], ["mount", "{tmp}"]])
def test_mount_point_must_be_given_and_empty(argv, tmp_path, capsys):
    (tmp_path / "x").write_text("x")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    line = one_line(capsys.readouterr().err)
    assert "empty" in line


def test_demo_size_beyond_memory(capsys):
    assert main(["demo", "--size-mib", "99999999"]) == 2
    assert "too large" in one_line(capsys.readouterr().err)


def test_console_entry_has_no_slow_import_before_main():
    """`import idlemap.cli` (what the console script and -m run first) must not
    pull in numpy: the signal handlers are installed in main(), after it."""
    r = subprocess.run([sys.executable, "-c", "import sys, idlemap.cli; print('numpy' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("side", [".present", ".json"])
def test_bitmap_side_files_checked_before_the_scan(tmp_path, side, capsys):
    os.mkfifo(tmp_path / f"b{side}")
    assert main(["bitmap", str(os.getpid()), "-o", str(tmp_path / "b")]) == 2
    assert "it is a FIFO" in one_line(capsys.readouterr().err)
    assert stat.S_ISFIFO(os.lstat(tmp_path / f"b{side}").st_mode)
    assert os.listdir(tmp_path) == [f"b{side}"]


@needs_root
@pytest.mark.parametrize("cmd, opt", PATHS, ids=[f"{c}{o}" for c, o in PATHS])
def test_every_path_option_into_a_read_only_directory(cmd, opt, tmp_path, capsys):
    """A read-only file system (73) and an immutable directory (77, as
    root ignores modes): the same code from every path option, before any
    scan, and nothing created."""
    with tmpfs(tmp_path / "ro", "size=64k,ro") as d:
        assert main(_path_argv(cmd, opt, d / "f")) == 73
        assert "read-only file system" in one_line(capsys.readouterr().err)
    imm = tmp_path / "imm"
    imm.mkdir()
    if subprocess.run(["chattr", "+i", str(imm)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i not supported here")
    try:
        assert main(_path_argv(cmd, opt, imm / "f")) == 77
        assert "permission denied writing" in one_line(capsys.readouterr().err)
        assert os.listdir(imm) == []
    finally:
        subprocess.run(["chattr", "-i", str(imm)], check=False)


@pytest.mark.parametrize("text, words", [("0-99999999999999999999999", "within"), ("5-3", "END must be above"),
                                         ("x-y", "expected START-END"), ("-5", "")])
@pytest.mark.parametrize("cmd", ["report", "record", "bitmap"])
def test_bad_address_range(cmd, text, words, tmp_path, capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
    import recgen
    rec = tmp_path / "r.rec"
    recgen.write(rec, recgen.changing_rounds(2))
    argv = {"report": ["report", str(rec), "hot"], "record": ["record", str(os.getpid()), "-o", str(tmp_path / "o")],
            "bitmap": ["bitmap", str(os.getpid()), "-o", str(tmp_path / "b")]}[cmd]
    assert main([*argv, f"--range={text}"]) == 2
    assert words in one_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["r.rec"]
