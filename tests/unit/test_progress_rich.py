"""Progress on a terminal: drawn with rich where installed (one code path:
the same line of text), erased before anything else is printed."""
import os
import pty
import sys

import pytest

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _run_on_a_pty(code: str) -> bytes:
    pid, fd = pty.fork()
    if pid == 0:                           # the child: stdout/stderr are the pty
        try:
            sys.path.insert(0, SRC)
            exec(code, {})
        finally:
            os._exit(0)
    out = b""
    while True:
        try:
            d = os.read(fd, 4096)
        except OSError:
            break
        if not d:
            break
        out += d
    os.waitpid(pid, 0)
    os.close(fd)
    return out


def test_progress_on_a_terminal_uses_rich_and_erases_itself():
    pytest.importorskip("rich")
    out = _run_on_a_pty(
        # fd 1 is the pty (pytest's capture still owns sys.stdout)
        "import os\n"
        "from idlemap.render.progress import Progress\n"
        "tty = os.fdopen(1, 'w', closefd=False)\n"
        "p = Progress(5, 'round', interval_s=1.0, out=tty)\n"
        "p.update(2)\n"
        "p.clear()\n"
        "tty.write('after\\n')\n"
        "tty.flush()\n")
    text = out.decode(errors="replace")
    assert "round 2/5" in text and "remaining ~3.0 s" in text
    assert "\u2501" in text                 # rich's bar
    assert text.rstrip().endswith("after")
