"""cgroup v2 file readers, path checks and the back-off rule, on a fake
cgroup tree in tmp_path (never the host's /sys/fs/cgroup)."""
import os
import signal

import pytest

from idlemap.cgroup_reclaim import MiB, back_off, promotion_rate
from idlemap.cli import main
from idlemap.errors import IdlemapError, UsageError
from idlemap.kernel import cgroup as cg

PRESSURE = ("some avg10=0.25 avg60=0.10 avg300=0.00 total=12345\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=17\n")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    app = root / "app"
    child = app / "child"
    for d in (root, app, child):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("")
    (app / "cgroup.procs").write_text("10\n11\n")
    (child / "cgroup.procs").write_text("11\n12\n")
    for name, text in (("memory.current", "4096\n"), ("memory.reclaim", ""), ("memory.pressure", PRESSURE),
                       ("memory.stat", "anon 100\nworkingset_refault_anon 7\nworkingset_refault_file 5\n")):
        (app / name).write_text(text)
    (child / "memory.current").write_text("0\n")
    monkeypatch.setattr(cg, "cgroup2_mounts", lambda mountinfo=None: [str(root)])
    return root


def test_readers(tree):
    app = str(tree / "app")
    assert cg.procs(app) == [10, 11, 12]
    p = cg.read_pressure(app)
    assert p["some"]["avg10"] == 0.25 and p["full"]["total"] == 17
    assert cg.refaults(cg.read_stat(app)) == 12
    assert cg.refaults({"workingset_refault": 3}) == 3
    assert cg.memory_current(app) == 4096


def test_resolve(tree, tmp_path):
    assert cg.resolve(str(tree / "app")) == os.path.realpath(tree / "app")
    assert cg.resolve("/app") == os.path.realpath(tree / "app")       # a cgroup path
    with pytest.raises(UsageError, match="no cgroup /nope"):
        cg.resolve("/nope")
    (tree / "app" / "notadir").write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        cg.resolve(str(tree / "app" / "notadir"))
    (tree / "plain").mkdir()
    with pytest.raises(UsageError, match="no cgroup.procs"):
        cg.resolve(str(tree / "plain"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(UsageError, match="not under a cgroup v2 mount"):
        cg.resolve(str(other))


def test_require_memory_files(tree):
    cg.require_memory_files(str(tree / "app"))
    with pytest.raises(UsageError, match="root cgroup"):
        cg.require_memory_files(str(tree))
    (tree / "app" / "child" / "memory.current").unlink()
    with pytest.raises(IdlemapError, match=r"memory controller is not enabled.*\+memory"):
        cg.require_memory_files(str(tree / "app" / "child"))
    (tree / "app" / "memory.reclaim").unlink()
    with pytest.raises(IdlemapError, match="5.19"):
        cg.require_memory_files(str(tree / "app"))
    (tree / "app" / "memory.reclaim").write_text("")
    (tree / "app" / "memory.pressure").unlink()
    with pytest.raises(IdlemapError, match="CONFIG_PSI"):
        cg.require_memory_files(str(tree / "app"))


def test_no_cgroup2_mounted(monkeypatch):
    monkeypatch.setattr(cg, "cgroup2_mounts", lambda mountinfo=None: [])
    with pytest.raises(IdlemapError, match="no cgroup v2 file system is mounted") as e:
        cg.resolve("/app")
    assert e.value.exit_code == 69


def test_cgroup2_mounts_parses_mountinfo(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
                  "31 23 0:27 / /proc rw - proc proc rw\n")
    assert cg.cgroup2_mounts(str(mi)) == ["/sys/fs/cgroup"]


@pytest.mark.parametrize("psi, refault, recent, why", [
    (0.0, 0, 0, ""),
    (0.1, 0, 0, "PSI"),            # at the target is too much
    (0.09, 0, 0, ""),
    (0.0, 10 * MiB, 100 * MiB, "refaults"),
    (0.0, 4 * MiB, 100 * MiB, ""),
    (0.0, 64 * 1024, 0, ""),
    (0.0, 1 * MiB, 0, "refaults"),       # under 5% of the 16 MiB floor: noise
])
def test_back_off(psi, refault, recent, why):
    got = back_off(psi, 0.1, refault, recent, 5.0)
    assert (why in got) if why else got == ""


@pytest.fixture
def keep_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("argv, words", [
    (["reclaim", "--cgroup", "/no/such/cgroup/here", "--dry-run"], "cgroup"),
    (["reclaim", "--cgroup", "/etc", "--dry-run"], "cgroup"),
    (["reclaim", "--cgroup", "/x", "123"], "not both"),
    (["reclaim", "--cgroup", "/x", "--mode", "cold"], "--mode cold"),
    (["reclaim", "--cgroup", "/x", "--psi-target", "nan"], "--psi-target"),
    (["reclaim", "--cgroup", "/x", "--target", "5%/fortnight"], "--target"),
    (["reclaim", "123"], "--cold-for"),
    (["reclaim", "123", "--cold-for", "2", "--promotion-target", "1%/min"], "--promotion-target goes with --cgroup"),
    (["reclaim", "--cgroup", "/x", "--promotion-target", "-1"], "--promotion-target"),
    (["reclaim", "123", "--cold-for", "2", "--via", "pageout"], "--via goes with --cgroup"),
    (["reclaim", "--cgroup", "/x", "--via", "madvise"], "--via"),
    (["advise", "--cgroup", "/no/such/cgroup/here"], "cgroup"),
    (["advise", "--cgroup", "/etc"], "cgroup"),
    (["advise", "--cgroup", "/x", "-p", "123"], "not both"),
    (["advise", "--cgroup", "/x", "--vm"], "--vm"),
    (["advise", "--cgroup", "/x", "--range", "0x1000-0x2000"], "--range"),
    (["exporter", "--advise", "--backend", "clear_refs", "--listen", "127.0.0.1:0"], "--advise needs the page_idle"),
    (["exporter", "--advise", "--advise-windows", "1"], "--advise-windows"),
])
def test_cli_bad_input_is_one_sentence(argv, words, capsys, keep_sigterm):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc in (2, 69) and err.count("\n") == 1 and err.startswith("idlemap: ") and words in err, err


def test_promotion_goal_backs_off_after_pressure_before_refaults():
    # 1 MiB of 100 MiB back over 30 s: 2%/min.
    assert promotion_rate(MiB, 30.0, 100 * MiB) == pytest.approx(2.0)
    assert promotion_rate(0, 30.0, 100 * MiB) == 0.0 and promotion_rate(MiB, 0.0, 100 * MiB) == 0.0
    assert back_off(0.0, 0.1, 0, 0, 5.0, 2.0, None, MiB) == ""              # no goal: no back-off
    assert back_off(0.0, 0.1, 0, 0, 5.0, 0.2, 0.2, MiB) == ""               # at the target is fine
    assert back_off(0.0, 0.1, 0, 0, 5.0, 2.0, 0.2, MiB).startswith("promotion rate of reclaimed pages 2%/min")
    assert back_off(0.0, 0.1, 0, 0, 5.0, 2.0, 0.2, MiB - 4096) == ""        # a few pages are not evidence
    assert back_off(0.5, 0.1, 0, 0, 5.0, 2.0, 0.2, MiB).startswith("PSI")
    assert back_off(0.0, 0.1, 10 * MiB, 0, 5.0, 2.0, 0.2, MiB).startswith("promotion")


@pytest.mark.parametrize("backend", ["clear_refs", "damon"])
def test_advise_cgroup_refuses_a_backend_without_a_per_page_map(tree, backend, capsys, keep_sigterm):
    # The group's backend is chosen (here: refused) before any of its
    # processes -- PIDs 10-12 of the fake tree -- is looked at.
    rc = main(["advise", "--cgroup", str(tree / "app"), "--backend", backend, "-n", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no per-page map" in err, err
