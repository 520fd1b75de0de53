"""idlemap.outputs on its own: what replaces what, and what is kept."""
from __future__ import annotations

import os
import stat

import pytest

from idlemap import outputs
from idlemap.errors import UsageError


def test_new_file_appears_only_when_published(tmp_path):
    p = tmp_path / "x"
    out = outputs.Output(str(p), "the test output")
    out.write(b"data")
    assert not p.exists()                  # a reader never sees half a file
    out.close()
    out.publish()
    assert p.read_bytes() == b"data" and os.listdir(tmp_path) == ["x"]


def test_path_turned_into_a_fifo_before_publish_is_refused(tmp_path):
    """Checked again at the rename: a FIFO put there meanwhile stays."""
    p = tmp_path / "x"
    out = outputs.Output(str(p), "the test output")
    out.write(b"data")
    os.mkfifo(p)
    with pytest.raises(UsageError, match="it is a FIFO"):
        out.publish()
    assert stat.S_ISFIFO(os.lstat(p).st_mode) and os.listdir(tmp_path) == ["x"]


def test_numbers_continue_after_the_highest(tmp_path):
    p = tmp_path / "a.rec"
    for name in ("a.rec", "a.rec.1", "a.rec.5", "a.rec.x", "b.rec.9"):
        (tmp_path / name).write_text(name)
    out = outputs.Output(str(p), "the record", keep_old=True)
    out.write(b"new")
    out.close()
    out.publish()
    assert out.kept == str(p) + ".6"
    assert (tmp_path / "a.rec.6").read_text() == "a.rec" and p.read_bytes() == b"new"


def test_failed_write_leaves_the_target_as_it_was(tmp_path):
    p = tmp_path / "x"
    p.write_text("old")
    with pytest.raises(RuntimeError), outputs.writing(str(p)) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["x"]


def test_writing_replaces_a_regular_file(tmp_path):
    p = tmp_path / "x"
    p.write_text("old")
    outputs.write_bytes(str(p), b"new")
    assert p.read_bytes() == b"new" and os.listdir(tmp_path) == ["x"]
