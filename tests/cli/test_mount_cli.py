"""idlemap mount through the real main(): help and refusals, on any kernel."""
import os

import pytest

from idlemap.cli import main


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["mount", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "idle_bitmap" in out and "--allow-other" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_missing_mount_point(capsys, tmp_path):
    assert main(["mount", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_mount_point_not_a_directory(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["mount", str(f)]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_already_a_mount_point(capsys):
    assert main(["mount", "/proc"]) == 2
    assert "already a mount point" in capsys.readouterr().err
