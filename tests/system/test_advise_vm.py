"""The savings advisor and the cgroup reclaim loop on a real kernel (the
test VM: page_idle, cgroup v2 memory controller, PSI, swap on zram).

Timing-free for the advisor: the workload touches exactly its hot set and
one warm group between rounds (acknowledged), so the truth per threshold is
known from the schedule and computed here group by group, independently of
analysis/advise.py.  Time is the rounds' measured windows (the same clock
for truth and measurement).
"""
import json
import os
import time

import pytest

from idlemap.analysis import advise as A
from idlemap.analysis.hotness import build_history
from idlemap.cli import main
from idlemap.kernel import pagemap as pm
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.process import identify
from idlemap.scan import Scanner
from idlemap.testing.machine import CG_ROOT
from idlemap.testing.workload import Workload

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB = 1 << 20
COLD_MIB, HOT_MIB, GROUP_MIB, PERIOD = 64, 32, 8, 4      # 4 warm groups of 8 MiB, each every 4th round
TOTAL_MIB = COLD_MIB + HOT_MIB + PERIOD * GROUP_MIB
ROUNDS = 12


def pages(mib):
    return (mib * MiB) >> PAGE_SHIFT


def report(name, **figures):
    print(json.dumps({"test": name, **figures}), flush=True)


def truth(k, windows):
    """(cold mean bytes, promoted bytes, observed s) at threshold k for the
    schedule: [hot | warm groups | cold]; round r touches hot and group r % PERIOD."""
    cold_sum, cold_n, prom, obs = 0, 0, 0, 0.0
    for r in range(ROUNDS):
        if r >= k - 1:
            c = COLD_MIB
            for g in range(PERIOD):
                age = (r - g) % PERIOD if g <= r else r + 1
                c += GROUP_MIB if age >= k else 0
            cold_sum += c
            cold_n += 1
        if r >= k:
            obs += windows[r]
            g = r % PERIOD
            age_prev = PERIOD - 1 if g + PERIOD <= r else r
            prom += GROUP_MIB if age_prev >= k else 0
    return cold_sum / cold_n * MiB, prom * MiB, obs


def test_advice_matches_the_known_schedule(zram_swap, capsys):
    with Workload() as w:
        a = w.map("data", TOTAL_MIB)
        w.touch("data")
        hot, gp = pages(HOT_MIB), pages(GROUP_MIB)
        with Scanner(identify(w.pid), backend="page_idle", need_per_page=True,
                     ranges=[(a, a + TOTAL_MIB * MiB)]) as sc:
            assert sc.tlb.exact
            sc.start()
            rounds = []
            for r in range(ROUNDS):
                w.touch("data", 1, 0, hot)
                w.touch("data", 1, hot + (r % PERIOD) * gp, gp)
                time.sleep(0.2)
                rounds.append(sc.round())
        adv = A.advise_history(build_history(rounds), 0.2)
    windows = [r.sample.window_s for r in rounds]
    ws_true = TOTAL_MIB * MiB
    rows = []
    worst_cold = worst_rate = 0.0
    for t in adv.thresholds:
        cm, pb, obs = truth(t.rounds, windows)
        rate_true = pb / ws_true / (obs / 60) * 100 if obs else 0.0
        cold_err = abs(t.cold_mean_bytes - cm) / cm
        rate_err = abs(t.rate_pct_per_min - rate_true) / rate_true if rate_true else t.rate_pct_per_min
        worst_cold, worst_rate = max(worst_cold, cold_err), max(worst_rate, rate_err)
        rows.append({"k": t.rounds, "cold_mib": round(t.cold_mean_bytes / MiB, 3), "cold_true_mib": cm / MiB,
                     "rate": round(t.rate_pct_per_min, 3), "rate_true": round(rate_true, 3)})
    report("advise", working_set_mib=adv.working_set_bytes / MiB, advised=adv.advised and adv.advised.rounds,
           advised_cold_mib=adv.advised and adv.advised.cold_mean_bytes / MiB,
           worst_cold_err_pct=100 * worst_cold, worst_rate_err_pct=100 * worst_rate, rows=rows)
    assert abs(adv.working_set_bytes - ws_true) <= 0.02 * ws_true
    assert worst_cold <= 0.02
    assert worst_rate <= 0.10
    # Groups come back every PERIOD rounds: k = PERIOD is the first threshold
    # with no promotion, and its cold memory is the cold set alone.
    assert adv.advised is not None and adv.advised.rounds == PERIOD
    assert abs(adv.advised.cold_end_bytes - COLD_MIB * MiB) <= 0.02 * COLD_MIB * MiB


def test_live_advise_command(capsys):
    with Workload() as w:
        a = w.map("data", 32)
        w.touch("data")
        rc = main(["advise", str(w.pid), "-n", "3", "-i", "0.3", "--range", f"{a:#x}-{a + 32 * MiB:#x}",
                   "--json"])
        out, err = capsys.readouterr()
    assert out, err
    d = json.loads(out)
    assert rc == 0 and d["schema"] == "idlemap.advise/1" and d["source"]["tlb_exact"] is True
    assert abs(d["working_set_bytes"] - 32 * MiB) <= 0.02 * 32 * MiB
    assert d["advised"]["rounds"] == 1 and d["advised"]["cold_end_bytes"] >= 0.98 * 32 * MiB


# -- reclaim --cgroup -----------------------------------------------------------
CG_COLD_MIB, CG_HOT_MIB = 192, 64


def join(path, pid):
    with open(f"{path}/cgroup.procs", "w") as f:
        f.write(str(pid))


def run_json(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return rc, lines, err


def run_psi_loop(capsys, cgroup_dir, count, via):
    """`reclaim --cgroup` for ``count`` rounds of 1 s held to PSI 0.1%, then
    the group's PSI at the end.  --target 5%/min: with 1 s windows a couple
    of interpreter pages coming back per round already exceed 0.2%/min of
    256 MiB, which would keep raising the threshold instead of reclaiming."""
    rc, lines, err = run_json(capsys, ["reclaim", "--cgroup", cgroup_dir, "--period", "1", "--count", str(count),
                                       "--psi-target", "0.1", "--target", "5%/min", "--via", via, "--json"])
    with open(f"{cgroup_dir}/memory.pressure") as f:
        psi_end = float(f.read().split()[1].split("=")[1])
    return rc, lines, err, psi_end


def psi_max(summary, rounds, psi_end):
    """The highest PSI some avg10 the loop or the end saw."""
    return max([summary["psi_max_avg10"], psi_end] + [r["psi_some_avg10"] for r in rounds])


def test_psi_loop_reclaims_the_cold_set_under_target(zram_swap, cgroup_dir, capsys):
    total = CG_COLD_MIB + CG_HOT_MIB
    hot = pages(CG_HOT_MIB)
    with Workload() as w:
        join(cgroup_dir, w.pid)
        a = w.map("data", total)
        w.touch("data")
        w.hot("data", 0, hot)                 # at C speed, never pausing, until stop
        time.sleep(1)
        rc, lines, err, psi_end = run_psi_loop(capsys, cgroup_dir, 16, "reclaim")
        loops = w.stop()
        with pm.Pagemap(w.pid) as p:
            e = p.read(a >> PAGE_SHIFT, pages(total))
        present = (e & pm.PRESENT) != 0
    assert rc == 0 and lines and lines[-1]["schema"].endswith("summary/1"), (rc, err, lines[-3:])
    rounds, summary = lines[:-1], lines[-1]
    cold_out = 1 - present[hot:].mean()
    psi_top = psi_max(summary, rounds, psi_end)
    report("reclaim_cgroup", rc=rc, cold_reclaimed_pct=100 * cold_out, hot_resident_pct=100 * present[:hot].mean(),
           psi_max_avg10=psi_top, psi_end=psi_end, hot_loops=loops,
           memory_before_mib=summary["memory_before_bytes"] / MiB,
           memory_after_mib=summary["memory_after_bytes"] / MiB, reclaimed_mib=summary["reclaimed_bytes"] / MiB,
           refault_mib=summary["refault_bytes"] / MiB, backoffs=summary["backoffs"],
           stop=summary["stop_reason"], advice=summary["advice"],
           per_round=[(r["threshold_rounds"], round(r["cold_bytes"] / MiB, 1), round(r["request_bytes"] / MiB, 1),
                       round(r["reclaimed_bytes"] / MiB, 1), r["psi_some_avg10"], r["note"]) for r in rounds])
    assert rc == 0, err
    assert summary["schema"] == "idlemap.reclaim.cgroup.summary/1" and summary["tlb_exact"] is True
    assert cold_out >= 0.90
    assert present[:hot].mean() >= 0.99
    assert psi_top < 0.1


def test_psi_loop_via_pageout_takes_exactly_the_cold_set(zram_swap, cgroup_dir, capsys):
    """`--via pageout`: the loop writes MADV_PAGEOUT of the pages it read
    cold instead of memory.reclaim.  On the workload where memory.reclaim
    took the hot loop's pages in this VM (bench.advise: a static C loop,
    tests/system/schedule.c, 64 MiB hot, 192 MiB cold), the cold set goes
    and the hot set stays, with no pressure."""
    from sched_helpers import Schedule, Shape
    hot, total = pages(CG_HOT_MIB), pages(CG_HOT_MIB + CG_COLD_MIB)
    with Schedule(Shape(CG_HOT_MIB, 0, 0, CG_COLD_MIB), cgroup_dir) as w:
        w.loop()
        time.sleep(1)
        rc, lines, err, psi_end = run_psi_loop(capsys, cgroup_dir, 12, "pageout")
        with pm.Pagemap(w.pid) as p:
            present = (p.read(w.addr >> PAGE_SHIFT, total) & pm.PRESENT) != 0
    assert rc == 0 and lines, (rc, err)
    rounds, summary = lines[:-1], lines[-1]
    psi_top = psi_max(summary, rounds, psi_end)
    report("reclaim_cgroup_pageout", cold_reclaimed_pct=100 * (1 - present[hot:].mean()),
           hot_resident_pct=100 * present[:hot].mean(), psi_max_avg10=psi_top,
           refault_mib=summary["refault_bytes"] / MiB, backoffs=summary["backoffs"],
           per_round=[(r["threshold_rounds"], round(r["request_bytes"] / MiB, 1),
                       round(r["reclaimed_bytes"] / MiB, 1), r["note"]) for r in rounds])
    assert summary["via"] == "pageout" and summary["tlb_exact"] is True
    assert 1 - present[hot:].mean() >= 0.90 and present[:hot].mean() >= 0.99
    assert psi_top < 0.1


def test_dry_run_changes_nothing_and_bad_paths(cgroup_dir, capsys):
    with Workload() as w:
        join(cgroup_dir, w.pid)
        a = w.map("data", 32)
        w.touch("data")
        # A loose target settles the threshold at --cold-for (2) at once: the
        # interpreter's own pages make the first rounds' rates noisy.
        rc, lines, err = run_json(capsys, ["reclaim", "--cgroup", cgroup_dir, "--period", "0.5", "--count", "6",
                                           "--target", "100%/min", "--dry-run", "--json"])
        with pm.Pagemap(w.pid) as p:
            present = (p.read(a >> PAGE_SHIFT, pages(32)) & pm.PRESENT) != 0
    assert rc == 0, err
    assert present.all()
    assert lines[-1]["dry_run"] and lines[-1]["reclaimed_bytes"] == 0
    assert lines[-1]["requested_bytes"] >= 30 * MiB          # planned from the cold set
    for argv, words in ((["--cgroup", "/tmp"], "not under a cgroup v2 mount"),
                        (["--cgroup", CG_ROOT], "root cgroup"),
                        (["--cgroup", "/no-such-group"], "no cgroup")):
        assert main(["reclaim", *argv, "--dry-run"]) in (2, 69)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_promotion_goal_raises_the_threshold_over_a_warm_set(zram_swap, cgroup_dir):
    """The loop's own promotion-rate goal, alone: PSI and refault guards
    out of the way (psi target 100%, refault limit 100%) and a loose advisor
    target (100%/min, which a 4 MiB warm set coming back every 8 rounds
    stays under).  The hot set is a loop that never pauses; rounds are
    driven here, and the warm set is touched before every 8th.  The warm set
    is cold at 2 rounds, so the loop reclaims it; when it comes back the
    goal (0.2%/min) backs off and doubles the threshold's floor, until the
    warm set is no longer idle long enough to go."""
    from idlemap.cgroup_reclaim import CgroupReclaimConfig, CgroupReclaimer
    hot_mib, warm_mib, cold_mib = 32, 4, 128
    hot, warm = pages(hot_mib), pages(warm_mib)
    total = hot + warm + pages(cold_mib)
    with Workload() as w:
        join(cgroup_dir, w.pid)
        a = w.map("data", hot_mib + warm_mib + cold_mib)
        w.touch("data")
        cfg = CgroupReclaimConfig(path=cgroup_dir, target_pct_per_min=100.0, psi_target_pct=100.0,
                                  max_refault_pct=100.0, promotion_target_pct_per_min=0.2)
        rounds = []
        with CgroupReclaimer(cfg) as eng:
            eng.start()
            for r in range(26):
                if r % 8 == 0:
                    w.stop()
                    w.touch("data", 1, hot, warm)
                    w.hot("data", 0, hot)
                time.sleep(0.5)
                rounds.append(eng.round())
            s = eng.summary("done")
        w.stop()
        with pm.Pagemap(w.pid) as p:
            present = (p.read(a >> PAGE_SHIFT, total) & pm.PRESENT) != 0
    backs = [x.index for x in rounds if "promotion rate" in x.note]
    report("promotion_goal", floor=s.threshold_floor, backoffs_at=backs, back_mib=s.back_bytes / MiB,
           promotion_rate_max=s.promotion_rate_max, reclaimed_mib=s.reclaimed_bytes / MiB,
           hot_resident_pct=100 * present[:hot].mean(), warm_resident_pct=100 * present[hot:hot + warm].mean(),
           cold_reclaimed_pct=100 * (1 - present[hot + warm:].mean()), advice=s.advice,
           per_round=[(x.threshold_rounds, round(x.cold_bytes / MiB, 1), round(x.reclaimed_bytes / MiB, 1),
                       round(x.back_bytes / MiB, 1), round(x.promotion_rate_pct_per_min, 2), x.note)
                      for x in rounds])
    assert s.tlb["tlb_exact"] is True
    assert backs, "the promotion goal never backed off"
    assert s.threshold_floor >= 4
    assert s.back_bytes >= 0.9 * warm_mib * MiB             # the warm set went and came back
    assert sum(x.back_bytes for x in rounds if x.index > backs[-1]) < MiB
    assert present[hot:hot + warm].mean() >= 0.99 and present[:hot].mean() >= 0.99
    assert 1 - present[hot + warm:].mean() >= 0.90


# -- advise --cgroup ------------------------------------------------------------
def test_cgroup_advice_matches_the_known_schedule(cgroup_dir, capsys):
    """Two static C processes with known schedules in one cgroup, summed by
    CgroupScan (what `advise --cgroup` and `reclaim --cgroup` use), whole
    address spaces: their memory besides the data is < 1 MiB each."""
    import jsonschema

    from idlemap.kernel import cgroup as cg
    from sched_helpers import SHAPES, SHAPES_DOC, compare, read_group, scheduled
    nrounds = 12
    with scheduled(SHAPES, cgroup_dir) as procs:
        got = read_group(cgroup_dir, procs, nrounds)
        rc = main(["advise", "--cgroup", cgroup_dir, "-n", "3", "-i", "0.3", "--json"])
        out = capsys.readouterr().out
    adv, own, c = got.advice, got.own, compare(SHAPES, got, nrounds)
    ws_true = sum(s.total_mib for s in SHAPES) * MiB
    k, end_true = c["advised"], c["cold_end_true_bytes"]
    report("advise_cgroup", shapes=SHAPES_DOC, working_set_mib=adv.working_set_bytes / MiB, advised=k,
           advised_cold_end_mib=adv.advised and adv.advised.cold_end_bytes / MiB,
           advised_cold_end_true_mib=end_true and end_true / MiB, worst_cold_err_pct=100 * c["worst_cold"],
           worst_rate_err_pct=100 * c["worst_rate"],
           own_advised={p: a.advised and a.advised.rounds for p, a in own.items()}, rows=c["rows"])
    assert abs(adv.working_set_bytes - ws_true) <= 0.02 * ws_true
    assert c["worst_cold"] <= 0.02 and c["worst_rate"] <= 0.10
    assert k == 4 and abs(adv.advised.cold_end_bytes - end_true) <= 0.02 * end_true
    assert sorted(a.advised.rounds for a in own.values()) == [2, 4]       # each process's own period
    # The command: the same sums, a row per process, the schema.
    assert rc == 0
    d = json.loads(out)
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "schemas", "idlemap.advise.v1.json")) as f:
        jsonschema.validate(d, json.load(f))
    assert d["source"]["cgroup"] == cg.resolve(cgroup_dir) and len(d["processes"]) == 2
    assert abs(d["working_set_bytes"] - ws_true) <= 0.02 * ws_true
