"""The real main(): `idlemap report` on synthetic record files, and bad input."""
import json
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
import recgen  # noqa: E402

from idlemap.cli import main  # noqa: E402
from idlemap.kernel.maps import PAGE_SIZE  # noqa: E402


@pytest.fixture(autouse=True)
def keep_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture
def phases(tmp_path):
    rounds, truth = recgen.phase_rounds(10)
    p = tmp_path / "phases.rec"
    recgen.write(p, rounds)
    return str(p), truth


def cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_json_kinds(capsys, phases, tmp_path):
    path, truth = phases
    rc, out, err = cli(capsys, "report", path, "wss", "--json")
    d = json.loads(out)
    assert rc == 0 and d["schema"] == "idlemap.report.wss/1" and d["round_range"] == [0, 30] and d["rounds"] == 30
    assert d["wss"]["max_bytes"] == 1524 * PAGE_SIZE and d["trend"]["direction"] == "rising"
    assert set(d["wss"]) == {"p50_bytes", "p90_bytes", "p95_bytes", "p99_bytes", "max_bytes", "min_bytes",
                             "mean_bytes"}

    rc, out, _ = cli(capsys, "report", path, "hot", "--rounds", "20:30", "--json")
    d = json.loads(out)
    assert d["pages_total"] == (truth["A"] | truth["C"]).sum() and d["ranges_total"] == 2
    assert d["ranges"][0]["mapping"] == "[anon]" and d["threshold"]["min_count"] == 10

    rc, out, _ = cli(capsys, "report", path, "cold", "--max-count", "10", "--json")
    d = json.loads(out)
    assert d["pages_total"] == (~(truth["A"] | truth["B"] | truth["C"])).sum() + truth["C"].sum() \
        + truth["B"].sum()

    png = tmp_path / "hist.png"
    rc, out, _ = cli(capsys, "report", path, "histogram", "--json", "--png", str(png))
    d = json.loads(out)
    counts = {b["count"]: b["pages"] for b in d["by_count"] if b["pages"]}
    assert counts == {0: 4096 - 2548, 10: 1524, 20: 1024}
    assert png.stat().st_size > 10_000 or not _has_mpl()

    rc, out, _ = cli(capsys, "report", path, "heatmap", "--json", "--rows", "8")
    d = json.loads(out)
    assert d["rows"] == 8 and d["cols"] == 30 and d["values"][0][:11] == [1.0] * 10 + [0.0]

    rc, out, _ = cli(capsys, "report", path, "info", "--json")
    d = json.loads(out)
    assert d["rounds"] == 30 and d["complete"] and d["meta"]["granularity"] == "page"


def _has_mpl():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_report_text_outputs(capsys, phases, tmp_path):
    path, _ = phases
    rc, out, _ = cli(capsys, "report", path, "wss")
    assert rc == 0 and "p50(MiB)" in out and "trend: rising" in out and "[anon]" in out
    rc, out, _ = cli(capsys, "report", path, "hot", "--rounds", "0:10")
    assert "hot pages (accessed in every one of 10 rounds): 4 MiB in 1 range" in out
    rc, out, _ = cli(capsys, "report", path, "heatmap", "--rows", "10", "--cols", "30", "--color", "never")
    assert rc == 0 and "@@@@@@@@@@.........." in out and "[anon]" in out
    rc, out, _ = cli(capsys, "report", path, "info")
    assert "rounds:      30 of 30 planned; complete" in out


def test_report_on_mapping_record(capsys, tmp_path):
    p = tmp_path / "m.rec"
    recgen.write(p, recgen.mapping_rounds(), "mapping")
    rc, out, _ = cli(capsys, "report", str(p), "wss", "--json")
    assert rc == 0 and json.loads(out)["round_range"] == [0, 5]
    # degrades to the mapping as its unit instead of refusing (issue 16)
    rc, out, err = cli(capsys, "report", str(p), "hot")
    assert rc == 0 and "by mapping" in out and "hot mappings" in out


@pytest.mark.parametrize("content,want", [
    (b"", "is empty"),
    (b"hello world, not a record at all" * 10, "not an idlemap record"),
    (None, "no such record file"),
])
def test_bad_files_get_one_sentence(capsys, tmp_path, content, want):
    p = tmp_path / "bad.rec"
    if content is not None:
        p.write_bytes(content)
    rc, out, err = cli(capsys, "report", str(p), "wss")
    assert rc == 65 and want in err and err.count("\n") == 1 and "Traceback" not in err


def test_truncated_record_reports_finished_rounds(capsys, phases, tmp_path):
    path, _ = phases
    data = open(path, "rb").read()
    cut = tmp_path / "cut.rec"
    cut.write_bytes(data[:len(data) * 2 // 3])
    rc, out, _ = cli(capsys, "report", str(cut), "info", "--json")
    d = json.loads(out)
    assert rc == 0 and 0 < d["rounds"] < 30 and not d["complete"]


def test_bad_options(capsys, phases):
    path, _ = phases
    rc, _, err = cli(capsys, "report", path, "hot", "--rounds", "x:y")
    assert rc == 2 and "bad --round-range" in err
    rc, _, err = cli(capsys, "report", path, "hot", "--min-count", "99")
    assert rc == 2 and "--min-count must be between 1 and" in err
    rc, _, err = cli(capsys, "report", path, "hot", "--range", "0x10-0x5")
    assert rc == 2 and "bad range" in err


def test_record_bad_target(capsys):
    rc, _, err = cli(capsys, "record", "999999999", "-n", "1")
    assert rc != 0 and "no process with PID 999999999" in err


def test_report_wss_png(capsys, phases, tmp_path):
    """The WSS-over-time picture: written, and the series behind it is the
    per-round WSS and RSS (phases: A 1024 pages, B 1524, then A+C)."""
    path, truth = phases
    png = tmp_path / "wss.png"
    rc, out, _ = cli(capsys, "report", path, "wss", "--json", "--png", str(png))
    d = json.loads(out)
    assert rc == 0 and d["png"] == str(png)
    wss = [s["wss_bytes"] // PAGE_SIZE for s in d["series"]]
    assert wss[:10] == [int(truth["A"].sum())] * 10 and wss[10:20] == [int(truth["B"].sum())] * 10
    assert all(s["rss_bytes"] >= s["wss_bytes"] for s in d["series"])
    if _has_mpl():
        from matplotlib import image
        img = image.imread(str(png))
        assert img.shape[1] == 1200 and img.shape[0] == 500        # 12 x 5 in at 100 dpi
    rc, out, _ = cli(capsys, "report", path, "wss", "--png", str(tmp_path / "w2.png"))
    assert rc == 0 and "wrote " in out and (tmp_path / "w2.png").exists() == _has_mpl()


@pytest.mark.parametrize("args", [["--round-range", "-10:"], ["--rounds", "-10:"], ["--round-range=-10:"],
                                  ["--rounds", "20:"]])
def test_round_range_from_the_end(capsys, phases, args):
    """A slice from the end (-10:, as the help's example) is a value, not an option."""
    path, _ = phases
    rc, out, err = cli(capsys, "report", path, "wss", *args, "--json")
    assert rc == 0, err
    assert json.loads(out)["round_range"] == [20, 30]


def test_options_between_positionals(capsys, phases):
    """`report FILE --json wss` as well as `report FILE wss --json`."""
    path, _ = phases
    rc, out, err = cli(capsys, "report", path, "--json", "wss")
    assert rc == 0, err
    assert json.loads(out)["schema"] == "idlemap.report.wss/1"


@pytest.mark.parametrize("kind", ["hot", "cold", "info"])
def test_png_where_the_report_draws_none_is_refused(capsys, phases, tmp_path, kind):
    path, _ = phases
    rc, out, err = cli(capsys, "report", path, kind, "--png", str(tmp_path / "x.png"))
    assert rc == 2 and "--png draws" in err and out == ""
    assert not (tmp_path / "x.png").exists()


def test_unwritable_png_fails_before_the_report(capsys, phases):
    """/proc passes access() for root but takes no files: found out first,
    not after the work (and not by losing the terminal report)."""
    path, _ = phases
    rc, out, err = cli(capsys, "report", path, "heatmap", "--png", "/proc/idlemap-test.png")
    assert rc == 73 and "does not take new files" in err and out == ""


def test_record_without_rounds(capsys, tmp_path):
    p = tmp_path / "empty.rec"
    recgen.write(p, [])
    rc, out, err = cli(capsys, "report", str(p), "wss")
    assert rc == 65 and err.count("\n") == 1 and "holds no rounds" in err, err
    p2 = tmp_path / "open.rec"
    recgen.write(p2, [], close=False)
    rc, out, err = cli(capsys, "report", str(p2), "hot")
    assert rc == 65 and err.count("\n") == 1 and "no finished round" in err, err


@pytest.mark.parametrize("args, needle", [
    (["hot", "{pid}", "0.1", "1", "--png", "{tmp}/h.png"], "--png draws"),
    (["hot", "{pid}", "0.1", "1", "--cold", "--histogram"], "do not go together"),
    (["heatmap", "{pid}", "0.1", "1", "--png", "/proc/idlemap-test.png"], "does not take new files"),
])
def test_live_reports_refuse_before_scanning(capsys, tmp_path, args, needle):
    rc, out, err = cli(capsys, *[a.replace("{pid}", str(os.getpid())).replace("{tmp}", str(tmp_path)) for a in args])
    assert rc in (2, 73) and needle in err and err.count("\n") == 1, err
    assert out == "" and os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, needle", [
    (["cold", "--min-idle", "99"], "--min-idle must be between 0 and the number of rounds (30)"),
    (["cold", "--max-count", "99"], "--max-count must be between 0 and the number of rounds (30)"),
    (["hot", "--min-count", "99"], "--min-count must be between 1 and the number of rounds (30)"),
    (["hot", "--min-count", "0"], "at least 1"),
])
def test_thresholds_beyond_the_record(capsys, phases, args, needle):
    path, _ = phases
    rc, out, err = cli(capsys, "report", path, *args)
    assert rc == 2 and needle in err and err.count("\n") == 1, err
