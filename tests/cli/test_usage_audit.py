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


# -- --damon-* values are checked before DAMON's availability ----------------

@pytest.mark.parametrize("regions", ["abc-def", "10-5", "0-0", "nan-inf", "2-100", "3-99999999999"])
@pytest.mark.parametrize("cmd", [["wss", "{pid}", "0.2", "1"], ["record", "{pid}", "-n", "1"]])
def test_bad_damon_regions_is_usage_whatever_damon_says(cmd, regions, capsys):
    # DAMON on this host may be busy, missing or free: the typo is reported first either way
    argv = [a.replace("{pid}", str(os.getpid())) for a in cmd]
    assert main(argv + ["--backend", "damon", "--damon-regions", regions]) == 2
    line = one_sentence(capsys.readouterr().err)
    assert "--damon-regions" in line and "at least 3 regions" in line and repr(regions) in line


def test_bad_damon_intervals_is_usage_whatever_damon_says(tmp_path, capsys):
    bad = ["--backend", "damon", "--damon-sample", "1", "--damon-aggr", "0.5"]
    assert main(["wss", str(os.getpid()), "0.2", "1", *bad]) == 2
    assert "aggregation interval" in one_sentence(capsys.readouterr().err)
    assert main(["record", str(os.getpid()), "-n", "1", "-o", str(tmp_path / "r.rec"), *bad]) == 2
    assert "aggregation interval" in one_sentence(capsys.readouterr().err)
    assert not (tmp_path / "r.rec").exists()


# -- options that would be ignored are refused (exit 2), before any backend ---

def _me(argv):
    return [a.replace("{pid}", str(os.getpid())) for a in argv]


@pytest.mark.parametrize("argv, needle", [
    (["wss", "{pid}", "0.5", "3", "-C", "-P", "2"], "-P measures its own windows"),
    (["wss", "{pid}", "-C", "-P", "2"], "does not go with -C"),
    (["wss", "{pid}", "0.5", "-P", "2"], "does not go with an interval or count"),
    (["wss", "{pid}", "1", "1", "--profile-base", "0.1"], "--profile-base goes with -P"),
])
def test_wss_profile_takes_no_other_windows(argv, needle, capsys):
    assert main(_me(argv)) == 2
    assert needle in one_sentence(capsys.readouterr().err)


@pytest.mark.parametrize("cmd", ["record", "hot", "heatmap", "advise"])
@pytest.mark.parametrize("extra, needle", [
    (["-i", "5", "-n", "1", "--auto-interval", "--max-interval", "0.2"], "give no interval with it"),
    (["5", "1", "--auto-interval"], "give no interval with it"),
    (["-n", "1", "-i", "0.1", "--min-interval", "0.5"], "--min-interval bounds --auto-interval"),
    (["-n", "1", "--max-interval", "3"], "--max-interval bounds --auto-interval"),
    (["-n", "1", "--auto-interval", "--min-interval", "5", "--max-interval", "1"], "must not exceed"),
    (["-n", "1", "--qmp", "/nonexistent.qmp"], "--qmp goes with --vm"),
])
def test_scan_interval_options_that_would_be_ignored(cmd, extra, needle, tmp_path, capsys):
    out = ["-o", str(tmp_path / "r.rec")] if cmd != "heatmap" else []
    assert main([cmd, str(os.getpid()), *extra, *out]) == 2
    assert needle in one_sentence(capsys.readouterr().err)
    assert not (tmp_path / "r.rec").exists()


def test_advise_cgroup_refuses_auto_interval_bounds(capsys):
    assert main(["advise", "--cgroup", "/", "--min-interval", "3"]) == 2
    assert "--auto-interval" in one_sentence(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    ["bitmap", "{pid}", "--qmp", "/nonexistent.qmp", "-o", "{out}"],
    ["wss", "{pid}", "1", "1", "--qmp", "/nonexistent.qmp", "--backend", "page_idle"],
])
def test_qmp_without_vm_is_usage_before_the_backend(argv, tmp_path, capsys):
    # page_idle may be missing here (exit 69): the option is wrong whatever the kernel
    argv = [a.replace("{out}", str(tmp_path / "b.bin")) for a in _me(argv)]
    assert main(argv) == 2
    assert one_sentence(capsys.readouterr().err) == "idlemap: --qmp goes with --vm"
    assert not (tmp_path / "b.bin").exists()


def test_vms_qmp_needs_a_pid(capsys):
    assert main(["vms", "--qmp", "/nonexistent.qmp"]) == 2
    assert "give its VMM's PID" in one_sentence(capsys.readouterr().err)


# -- a range error names both ends of the range -------------------------------

@pytest.mark.parametrize("argv, name", [
    (["wss", "{pid}", "0.2", "1", "--by-mapping", "--top", "99999999999"], "--top"),
    (["wss", "{pid}", "0.2", "99999999999999999999"], "count"),
    (["wss", "{pid}", "0.2", "0"], "count"),
    (["record", "{pid}", "-n", "0"], "--rounds"),
])
def test_range_errors_name_the_range(argv, name, capsys):
    from idlemap.validate import MAX_COUNT
    assert main(_me(argv)) == 2
    line = one_sentence(capsys.readouterr().err)
    assert name in line and f"at least 1 and at most {MAX_COUNT}" in line


# -- top --pids: when no named process can be measured, say why ---------------

def _kernel_thread() -> int:
    from idlemap.kernel.tasks import list_tasks
    t = next((t for t in list_tasks() if t.kthread), None)
    if t is None:
        pytest.skip("no kernel thread visible in /proc (a PID namespace?)")
    return t.pid


@pytest.fixture
def zombie():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    # not reaped until the test ends: a zombie of our own
    import time
    from idlemap.kernel.tasks import read_task
    while read_task(pid).state not in ("Z", "X"):
        time.sleep(0.01)
    yield pid
    os.waitpid(pid, 0)


@pytest.fixture
def sleeper():
    import subprocess
    p = subprocess.Popen(["sleep", "600"])
    yield p.pid
    p.kill()
    p.wait()


def test_top_pids_only_kernel_threads_is_usage(capsys):
    k = _kernel_thread()
    assert main(["top", "0.2", "1", "--pids", str(k)]) == 2
    assert "is a kernel thread" in one_sentence(capsys.readouterr().err)


def test_top_pids_only_a_zombie_is_exit_1(zombie, capsys):
    assert main(["top", "0.2", "1", "--pids", str(zombie)]) == 1
    assert "zombie" in one_sentence(capsys.readouterr().err)


def test_top_pids_kernel_thread_and_zombie(zombie, capsys):
    k = _kernel_thread()
    assert main(["top", "0.2", "1", "--pids", f"{k},{zombie}"]) == 2
    line = one_sentence(capsys.readouterr().err)
    assert "none of the given processes can be measured" in line and "zombie" in line


def test_top_pids_one_measurable_is_enough(zombie, sleeper, capsys):
    k = _kernel_thread()
    assert main(["top", "0.2", "1", "--json", "--pids", f"{k},{zombie},{sleeper}"]) == 0
    import json
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])["processes"]
    assert [r["pid"] for r in rows] == [sleeper]


def test_top_pids_none_readable_is_denied(sleeper):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid")
    # imported before the fork: the child runs as nobody, who may not read root's site-packages
    import idlemap.backends.system  # noqa: F401
    import idlemap.commands.top  # noqa: F401
    import idlemap.render.top  # noqa: F401
    import numpy  # noqa: F401
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        rc = 99
        try:
            os.close(r)
            os.dup2(w, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            import sys
            sys.stderr = os.fdopen(2, "w")
            rc = main(["top", "0.2", "1", "--pids", str(sleeper)])
            sys.stderr.flush()
        finally:
            os._exit(rc)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 77
    assert one_sentence(err) == (f"idlemap: permission denied reading process {sleeper} "
                                 "(run as root or as their owner)")


# -- an option only page_idle takes, with --backend auto, where page_idle cannot run

HAS_PAGE_IDLE = os.path.exists("/sys/kernel/mm/page_idle/bitmap")


@pytest.mark.skipif(HAS_PAGE_IDLE, reason="this kernel has page_idle: auto can pick it for these options")
@pytest.mark.parametrize("opt", [["--vms"], ["--mark", "range"], ["--tlb-flush", "soft-dirty"]])
def test_top_page_idle_option_names_the_missing_config(opt, capsys):
    from idlemap.kernel.kmod import loaded
    if loaded() and opt[0] != "--vms":
        pytest.skip("idlemap's module is loaded: auto picks kmod, which does not take it (exit 2)")
    assert main(["top", "0.2", "1", "--pids", str(os.getpid()), *opt]) == 69
    line = one_sentence(capsys.readouterr().err)
    assert "CONFIG_IDLE_PAGE_TRACKING" in line and f"{' '.join(opt)} needs the page_idle backend" in line


@pytest.mark.parametrize("opt", [["--vms"], ["--mark", "range"]])
def test_top_page_idle_option_with_another_backend_named_is_usage(opt, capsys):
    # the user chose clear_refs: the combination is wrong whatever the kernel has
    assert main(["top", "0.2", "1", "--pids", str(os.getpid()), "--backend", "clear_refs", *opt]) == 2
    assert "goes with the page_idle backend, not clear_refs" in one_sentence(capsys.readouterr().err)


def _exporter(*args):
    """The exporter as a real process on a loopback port picked here; a run
    that starts serving instead of refusing is killed by its PID."""
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "exporter", "--listen", f"127.0.0.1:{port}",
                          "--pids", str(os.getpid()), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err


@pytest.mark.skipif(HAS_PAGE_IDLE, reason="this kernel has page_idle: auto picks it for --advise and --vms")
@pytest.mark.parametrize("opt", [["--advise"], ["--vms"]])
def test_exporter_page_idle_option_names_the_missing_config(opt):
    pytest.importorskip("prometheus_client")
    rc, err = _exporter(*opt)
    assert rc == 69, err
    line = one_sentence(err)
    assert "CONFIG_IDLE_PAGE_TRACKING" in line and f"{opt[0]} needs the page_idle backend" in line


def test_exporter_advise_with_clear_refs_named_is_usage():
    pytest.importorskip("prometheus_client")
    rc, err = _exporter("--advise", "--backend", "clear_refs")
    assert rc == 2, err
    assert "--advise needs the page_idle system scan" in one_sentence(err)
