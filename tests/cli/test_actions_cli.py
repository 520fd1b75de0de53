"""reclaim/tier through the real main(): refusals and bad input, on any kernel."""
import os

import pytest

from idlemap.cli import main
from idlemap.kernel.tasks import list_tasks
from idlemap.testing.workload import Workload

HAS_PAGE_IDLE = os.path.exists("/sys/kernel/mm/page_idle/bitmap")


def kernel_thread_pid():
    return next((t.pid for t in list_tasks() if t.kthread), None)


def test_pid_1_refused_without_force(capsys):
    for args in (["reclaim", "1", "--cold-for", "2"], ["tier", "1", "--fast", "0", "--slow", "1"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "PID 1" in err and "--force" in err and err.count("\n") == 1


def test_kernel_thread_refused_even_with_force(capsys):
    pid = kernel_thread_pid()
    if pid is None:
        pytest.skip("no kernel thread visible in this PID namespace")
    assert main(["reclaim", str(pid), "--cold-for", "2", "--force"]) == 2
    assert "kernel thread" in capsys.readouterr().err


def test_own_process_refused(capsys):
    assert main(["reclaim", str(os.getpid()), "--cold-for", "1"]) == 2
    assert "own memory" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["reclaim", "123", "--cold-for", "0"], "--cold-for"),
    (["reclaim", "123", "--cold-for", "2", "--period", "0"], "--period"),
    (["reclaim", "123", "--cold-for", "2", "--limit-mb-per-s", "-1"], "--limit-mb-per-s"),
    (["reclaim", "123", "--cold-for", "2", "--max-refault-pct", "200"], "--max-refault-pct"),
    (["reclaim", "123", "--cold-for", "2", "--range", "5-1"], "bad range"),
    (["reclaim", "123", "9", "--cold-for", "2"], "too many"),
    (["tier", "123", "--fast", "0", "--slow", "0"], "different nodes"),
    (["tier", "123", "--fast", "0", "--slow", "1", "--hot-rounds", "0"], "at least 1"),
    (["tier", "123", "--fast", "0", "--slow", "1", "--max-mb-per-period", "0"], "--max-mb-per-period"),
])
def test_bad_input_one_sentence(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("idlemap: ") and err.count("\n") == 1


def test_missing_process(capsys):
    assert main(["reclaim", "999999999", "--cold-for", "1"]) == 1
    assert "no process with PID 999999999" in capsys.readouterr().err


@pytest.mark.skipif(HAS_PAGE_IDLE, reason="this kernel has page_idle")
def test_without_page_idle_names_the_config(capsys):
    with Workload() as w:
        rc = main(["reclaim", str(w.pid), "--cold-for", "1", "--dry-run"])
        rc2 = main(["tier", str(w.pid), "--fast", "0", "--slow", "1", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 69 and rc2 in (2, 69)        # tier: node 1 may not exist here either
    assert "CONFIG_IDLE_PAGE_TRACKING" in err


def test_help_has_examples(capsys):
    for cmd in ("reclaim", "tier"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and f"idlemap {cmd} 1234" in out and "--dry-run" in out
