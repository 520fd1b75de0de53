"""The real main(): `idlemap report FILE advise` on synthetic records, and
`idlemap advise` / bad input on the host (no page_idle here)."""
import json
import os
import signal
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
import recgen  # noqa: E402

from idlemap.testing import synth  # noqa: E402
from idlemap.cli import main  # noqa: E402
from idlemap.kernel.maps import PAGE_SIZE  # noqa: E402


@pytest.fixture(autouse=True)
def keep_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture
def rec(tmp_path):
    """1000 pages: 200 hot, 4 groups of 50 touched every 4th round, 600 cold."""
    sp = synth.spans([synth.mapping(recgen.DATA, 1000 * PAGE_SIZE)])
    rounds = []
    for r in range(12):
        acc = np.zeros(1000, bool)
        acc[:200] = True
        g = r % 4
        acc[200 + g * 50:250 + g * 50] = True
        rounds.append(synth.make_round(r, sp, acc))
    p = tmp_path / "adv.rec"
    recgen.write(p, rounds)
    return str(p)


def cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_advise_text_json_png(capsys, rec, tmp_path):
    rc, out, err = cli(capsys, "report", rec, "advise")
    assert rc == 0 and "RATE(%/min)" in out and "COLD(MiB)" in out and "T(s)" in out
    assert "advised: T = 4 s (4 rounds)" in out
    rc, out, _ = cli(capsys, "report", rec, "advise", "--json")
    d = json.loads(out)
    assert d["schema"] == "idlemap.advise/1" and d["source"]["record"].endswith("adv.rec")
    assert d["advised"]["rounds"] == 4 and d["advised"]["cold_end_bytes"] == 600 * PAGE_SIZE
    assert d["working_set_bytes"] == 1000 * PAGE_SIZE and len(d["thresholds"]) == 11
    assert d["thresholds"][0]["rate_pct_per_min"] == pytest.approx(50 / 1000 * 60 * 100)
    pytest.importorskip("matplotlib")
    png = tmp_path / "a.png"
    rc, out, _ = cli(capsys, "report", rec, "advise", "--png", str(png), "--target", "0.5%/h")
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_advise_window_and_unmet_target(capsys, rec):
    # Rounds 0..2 only: every resolvable threshold (1, 2) sees promotions.
    rc, out, _ = cli(capsys, "report", rec, "advise", "--rounds", "0:4", "--json")
    d = json.loads(out)
    assert rc == 0 and d["advised"] is None and [t["rounds"] for t in d["thresholds"]] == [1, 2, 3]
    rc, out, _ = cli(capsys, "report", rec, "advise", "--rounds", "0:4")
    assert "no threshold up to 3 s meets 0.2%/min" in out


def test_report_advise_single_round(capsys, rec):
    rc, out, _ = cli(capsys, "report", rec, "advise", "--rounds", "0:1")
    assert rc == 0 and "fewer than 2 rounds" in out


@pytest.mark.parametrize("bad", ["nan", "-1%/min", "0.2%/fortnight", "101%"])
def test_bad_target_is_one_sentence(capsys, rec, bad):
    rc, _, err = cli(capsys, "report", rec, "advise", f"--target={bad}")
    assert rc == 2 and err.count("\n") == 1 and "promotion rate" in err and "Traceback" not in err


def test_mapping_granular_record_is_refused(capsys, tmp_path):
    p = tmp_path / "m.rec"
    recgen.write(p, recgen.mapping_rounds(), granularity="mapping")
    rc, _, err = cli(capsys, "report", str(p), "advise")
    assert rc == 65 and "per-page" in err and err.count("\n") == 1


def test_live_advise_without_page_idle_or_process(capsys):
    rc, _, err = cli(capsys, "advise", "999999999")
    assert rc == 1 and err.startswith("idlemap: no process")
    if not os.path.exists("/sys/kernel/mm/page_idle/bitmap"):
        rc, _, err = cli(capsys, "advise", str(os.getpid()), "-n", "2", "-i", "0.1")
        assert rc != 0 and err.count("\n") == 1 and "Traceback" not in err
