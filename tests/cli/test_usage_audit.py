"""Bad option values and bad targets found by an audit: each is refused with
one sentence and the table's exit code, before any kernel state is asked."""
import os
import shutil

import pytest

from idlemap.cli import main



def one_sentence(stderr):
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("idlemap: ")
    return lines[0]


# -- kmod load --ko: what the path is, and whether it is a module at all ------

def test_kmod_load_not_a_module(tmp_path, capsys):
    ko = tmp_path / "fake.ko"
    ko.write_text("hi\n")
    assert main(["kmod", "load", "--ko", str(ko)]) == 65
    assert "is not a kernel module" in one_sentence(capsys.readouterr().err)


def test_kmod_load_elf_without_vermagic(tmp_path, capsys):
    ko = tmp_path / "true.ko"
    shutil.copy("/bin/true", ko)
    assert main(["kmod", "load", "--ko", str(ko)]) == 65
    assert "no vermagic" in one_sentence(capsys.readouterr().err)


def test_kmod_load_special_paths(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)            # nobody writes it: opening it for reading would hang the test
    for path, kind in ((tmp_path, "a directory"), (fifo, "a FIFO"), ("/dev/null", "a character device")):
        assert main(["kmod", "load", "--ko", str(path)]) == 2
        assert one_sentence(capsys.readouterr().err) == f"idlemap: {path} is {kind}, not a module file"
    assert main(["kmod", "load", "--ko", str(tmp_path / "absent.ko")]) == 2
    assert "no such module file" in one_sentence(capsys.readouterr().err)

