"""The savings advisor (analysis/advise.py) on synthetic histories whose
truth is computed here independently, group by group (no per-page ages)."""
import json

import numpy as np
import pytest

from idlemap.testing import synth
from idlemap.analysis import advise as A
from idlemap.analysis.hotness import build_history
from idlemap.kernel.maps import PAGE_SIZE

DATA = 0x7f00_0000_0000


def schedule(n_rounds, cold, hot, warm_groups, group_pages, period):
    """Pages: [cold | hot | warm groups]; round r touches hot and warm group
    r % period (groups >= period never)."""
    total = cold + hot + warm_groups * group_pages
    sp = synth.spans([synth.mapping(DATA, total * PAGE_SIZE)])
    rounds = []
    for r in range(n_rounds):
        acc = np.zeros(total, bool)
        acc[cold:cold + hot] = True
        g = r % period
        if g < warm_groups:
            a = cold + hot + g * group_pages
            acc[a:a + group_pages] = True
        rounds.append(synth.make_round(r, sp, acc, interval_s=2.0))
    return rounds, total


def truth(n_rounds, k, cold, hot, warm_groups, group_pages, period, interval_s=2.0):
    """Cold mean pages and promoted pages at threshold k, by groups."""
    cold_sum, cold_n, prom, obs = 0, 0, 0, 0
    for r in range(n_rounds):
        if r >= k - 1:
            c = cold
            for g in range(warm_groups):
                age = (r - g) % period if g <= r else r + 1
                if g >= period:
                    age = r + 1
                c += group_pages if age >= k else 0
            cold_sum += c
            cold_n += 1
        if r >= k:
            obs += interval_s
            g = r % period
            if g < warm_groups:
                age_prev = period - 1 if g + period <= r else r
                prom += group_pages if age_prev >= k else 0
    return cold_sum / cold_n, prom, obs


@pytest.mark.parametrize("period", [3, 5])
def test_figures_match_the_schedule_exactly(period):
    n, cold, hot, groups, gp = 20, 300, 100, period, 40
    rounds, total = schedule(n, cold, hot, groups, gp, period)
    adv = A.advise_history(build_history(rounds), target_pct_per_min=0.2)
    assert adv.working_set_bytes == total * PAGE_SIZE
    assert [t.rounds for t in adv.thresholds] == list(range(1, n))
    for t in adv.thresholds:
        cm, prom, obs = truth(n, t.rounds, cold, hot, groups, gp, period)
        assert t.cold_mean_bytes == round(cm * PAGE_SIZE)
        assert t.promoted_bytes == prom * PAGE_SIZE
        assert t.observed_s == pytest.approx(obs)
        assert t.seconds == pytest.approx(2.0 * t.rounds)
        want = prom * PAGE_SIZE / (total * PAGE_SIZE) / (obs / 60) * 100
        assert t.rate_pct_per_min == pytest.approx(want)
    # The warm groups come back every `period` rounds: any threshold below
    # `period` sees them promoted; from `period` on, only the never-touched
    # first accesses (none past the first rounds) -- so k = period is advised.
    assert adv.advised is not None and adv.advised.rounds == period
    assert adv.advised.cold_end_bytes == cold * PAGE_SIZE
    for t in adv.thresholds:
        if t.rounds < period:
            assert t.rate_pct_per_min > 0.2


def test_static_cold_set_is_all_savings_with_zero_rate():
    n = 6
    sp = synth.spans([synth.mapping(DATA, 1000 * PAGE_SIZE)])
    acc = np.zeros(1000, bool)
    acc[:250] = True
    adv = A.advise_history(build_history([synth.make_round(r, sp, acc) for r in range(n)]))
    assert adv.advised.rounds == 1
    assert all(t.cold_mean_bytes == 750 * PAGE_SIZE for t in adv.thresholds)
    assert all(t.promoted_bytes == 0 and t.rate_pct_per_min == 0 for t in adv.thresholds)
    json.dumps(adv.as_dict())


def test_swapped_out_page_touched_again_is_a_promotion_first_touch_is_not():
    sp = synth.spans([synth.mapping(DATA, 4 * PAGE_SIZE)])
    rounds = []
    for r in range(6):
        present = np.array([True, r != 2 and r != 3, r >= 3, True])
        acc = np.array([True, r == 4, r == 3, False])   # page 1 back at 4; page 2 born at 3
        rounds.append(synth.make_round(r, sp, acc, present))
    adv = A.advise_history(build_history(rounds))
    by_k = {t.rounds: t for t in adv.thresholds}
    # Page 1: seen at 0, not accessed 0..3 (absent 2..3 but ageing): age 4
    # before round 4, so promoted for k <= 4.  Page 2's touch at 3 is its birth.
    assert by_k[1].promoted_bytes == PAGE_SIZE
    assert by_k[4].promoted_bytes == PAGE_SIZE
    assert by_k[5].promoted_bytes == 0


def test_target_is_not_met_when_everything_comes_back():
    sp = synth.spans([synth.mapping(DATA, 100 * PAGE_SIZE)])
    rounds = []
    for r in range(8):
        acc = np.zeros(100, bool)
        acc[(r % 2) * 50:(r % 2) * 50 + 50] = True      # each half every other round
        rounds.append(synth.make_round(r, sp, acc))
    adv = A.advise_history(build_history(rounds), target_pct_per_min=0.2)
    assert adv.thresholds[0].rate_pct_per_min > 0.2
    # k >= 2: nothing is ever idle 2 rounds, so nothing is cold and nothing promoted
    assert adv.advised.rounds == 2 and adv.advised.cold_mean_bytes == 0


def test_vpn_tracker_follows_a_changing_layout():
    t = A.VpnAgeTracker(8)
    v1 = np.arange(100, 110)
    t.step(v1, np.zeros(10, bool), np.ones(10, bool))
    t.step(v1, np.zeros(10, bool), np.ones(10, bool))
    v2 = np.arange(105, 120)            # 105..109 kept (age 2), 110.. new
    res, prom = t.step(v2, np.zeros(15, bool), np.ones(15, bool))
    assert (t.t.age[:5] == 3).all() and (t.t.age[5:] == 1).all()
    assert res[3] == 5 and res[1] == 10
    assert list(t.cold_vpns(3, np.ones(15, bool))) == list(range(105, 110))


@pytest.mark.parametrize("text,want", [("0.2%/min", 0.2), ("0.2", 0.2), ("1%", 1.0), ("0.01%/s", 0.6),
                                       ("6%/h", 0.1), (" 0 %/min ", 0.0)])
def test_parse_target(text, want):
    assert A.parse_target(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["nan", "inf%/min", "-1%/min", "200%", "0.2%/day", "", "abc"])
def test_parse_target_refuses(text):
    with pytest.raises(ValueError):
        A.parse_target(text)


def test_frame_advisor_by_frame_per_group():
    """FrameAdvisor (the exporter's): frames 0-1 hot, 2-3 touched every 2nd
    window, 4-9 never; a second group shares frames 0-3 and has 20-21 never
    touched.  Advised T = 2 windows, cold = the never-touched frames."""
    import numpy as np
    fa = A.FrameAdvisor(6, page_size=4096)
    union = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21], np.uint64)
    a = (union[:10], np.ones(10, np.int64))
    b = (np.array([0, 1, 2, 3, 20, 21], np.uint64), np.array([1, 1, 1, 1, 512, 1]))   # 20: a THP head
    for r in range(6):
        idle = np.ones(union.size, bool)
        idle[:2] = False
        if r % 2 == 0:
            idle[2:4] = False
        fa.step(union, idle, {"a": a, "b": b}, 1.0)
    adv = fa.advice("a", 0.2)
    assert adv.advised.rounds == 2 and adv.advised.cold_end_bytes == 6 * 4096 and adv.working_set_bytes == 10 * 4096
    assert adv.thresholds[0].rate_pct_per_min > 0            # T = 1: the warm frames come back
    adv_b = fa.advice("b", 0.2)
    assert adv_b.advised.rounds == 2 and adv_b.advised.cold_end_bytes == 513 * 4096
    # A group missing from a window is forgotten; one window is too few.
    fa.step(union, np.ones(union.size, bool), {"b": b}, 1.0)
    assert fa.advice("a", 0.2) is None and fa.advice("b", 0.2) is not None
