"""The reclaim/tier policy (analysis/actions.py): pure functions, exact."""
import errno

import numpy as np
import pytest

from idlemap.analysis import actions as policy
from idlemap.kernel import numa

T, F = True, False


def state(vpns, idle=None, hot=None, acted=None):
    st = policy.PageState.empty(np.asarray(vpns, np.int64))
    if idle is not None:
        st.idle_streak[:] = idle
    if hot is not None:
        st.hot_streak[:] = hot
    if acted is not None:
        st.acted_round[:] = acted
    return st


# -- history across rounds ----------------------------------------------------

def test_carry_keeps_counters_of_pages_still_mapped():
    prev = state([10, 11, 12, 20], idle=[1, 2, 3, 4], hot=[5, 6, 7, 8], acted=[-1, 3, -1, 2])
    # 10 unmapped, 13 and 21 new, 11/12/20 kept.
    st = policy.carry(prev, np.array([11, 12, 13, 20, 21]))
    assert st.vpns.tolist() == [11, 12, 13, 20, 21]
    assert st.idle_streak.tolist() == [2, 3, 0, 4, 0]
    assert st.hot_streak.tolist() == [6, 7, 0, 8, 0]
    assert st.acted_round.tolist() == [3, -1, -1, 2, -1]


def test_carry_first_round_and_empty():
    st = policy.carry(None, np.array([5, 6]))
    assert st.idle_streak.tolist() == [0, 0] and st.acted_round.tolist() == [-1, -1]
    assert policy.carry(state([1, 2], idle=[3, 3]), np.array([], np.int64)).vpns.size == 0
    assert policy.carry(state([]), np.array([7])).idle_streak.tolist() == [0]


def test_carry_same_layout_reuses_arrays():
    prev = state([1, 2, 3], idle=[1, 2, 3])
    st = policy.carry(prev, np.array([1, 2, 3]))
    assert st.idle_streak is prev.idle_streak


def test_update_streaks():
    st = state([1, 2, 3, 4], idle=[2, 0, 5, 1], hot=[0, 3, 0, 0])
    present = np.array([T, T, T, F])
    idle = np.array([T, F, F, F])
    policy.update_streaks(st, present, idle)
    # idle again -> 3; accessed -> hot 4; accessed after idle -> hot 1; not present -> 0/0.
    assert st.idle_streak.tolist() == [3, 0, 0, 0]
    assert st.hot_streak.tolist() == [0, 4, 1, 0]


def test_streaks_saturate_instead_of_wrapping():
    st = state([1], idle=[policy.STREAK_MAX])
    policy.update_streaks(st, np.array([T]), np.array([T]))
    assert int(st.idle_streak[0]) == policy.STREAK_MAX


# -- ranges, budgets ------------------------------------------------------------

def test_coalesce_runs_never_bridge_gaps():
    first, n = policy.coalesce(np.array([3, 4, 5, 7, 9, 10]))
    assert first.tolist() == [3, 7, 9] and n.tolist() == [3, 1, 2]
    first, n = policy.coalesce(np.array([], np.int64))
    assert first.size == 0 and n.size == 0


def test_budget_pages_uses_nominal_period():
    assert policy.budget_pages(None, 1.0, 4096) is None
    assert policy.budget_pages(10 * 2**20, 0.5, 4096) == 1280      # 5 MiB per round
    assert policy.budget_pages(1000, 1.0, 4096) == 0


def test_pick_highest_priority_first_result_sorted():
    mask = np.array([T, T, F, T, T])
    prio = np.array([1, 9, 9, 5, 9])
    assert policy.pick(mask, prio, None).tolist() == [0, 1, 3, 4]
    assert policy.pick(mask, prio, 2).tolist() == [1, 4]
    assert policy.pick(mask, prio, 3).tolist() == [1, 3, 4]
    assert policy.pick(mask, prio, 0).tolist() == []


# -- reclaim ------------------------------------------------------------------

def test_reclaim_candidates_threshold_and_retry():
    st = state([1, 2, 3, 4, 5], idle=[3, 2, 3, 3, 3], acted=[-1, -1, 9, 7, -1])
    present = np.array([T, T, T, T, F])
    cand = policy.reclaim_candidates(st, present, cold_for=3, round_no=10)
    # page 2 not idle long enough; page 3 advised last round; page 4 advised
    # 3 rounds ago and still resident: retried; page 5 not present.
    assert cand.tolist() == [T, F, F, T, F]


def test_take_refaults_counts_by_advice_round_and_clears():
    st = state([1, 2, 3, 4], acted=[4, 4, 6, -1])
    accessed = np.array([T, F, T, T])
    back = policy.take_refaults(st, accessed)
    assert back == {4: 1, 6: 1}
    assert st.acted_round.tolist() == [-1, 4, -1, -1]
    assert policy.take_refaults(st, np.zeros(4, bool)) == {}


def test_guard_no_verdict_on_few_pages():
    g = policy.RefaultGuard(cold_for=2, rate_bytes_per_s=None, min_pages=100)
    policy.guard_advised(g, 1, 10)
    policy.guard_refaults(g, 2, {1: 10})          # 100% but only 10 pages
    assert g.backoffs == 0 and not g.stopped


def test_guard_backs_off_then_stops():
    g = policy.RefaultGuard(cold_for=2, rate_bytes_per_s=8.0, threshold_pct=5.0, min_pages=100, max_backoffs=2)
    policy.guard_advised(g, 1, 1000)
    policy.guard_refaults(g, 2, {1: 50})          # 5.0%: not above
    assert g.backoffs == 0
    policy.guard_refaults(g, 3, {1: 1})           # 5.1%
    assert (g.backoffs, g.cold_for, g.rate_bytes_per_s, g.stopped) == (1, 4, 4.0, False)
    assert "backed off" in g.reason
    # Counters restart after a back-off: the old pages no longer count.
    assert g.window_ratio(3) == (0, 0)
    policy.guard_advised(g, 4, 200)
    policy.guard_refaults(g, 5, {4: 20})
    assert (g.backoffs, g.cold_for) == (2, 8)
    policy.guard_advised(g, 6, 200)
    policy.guard_refaults(g, 7, {6: 200})
    assert g.stopped and g.backoffs == 2 and g.reason.startswith("stopped")


def test_guard_judges_major_faults_too():
    """The target's own major faults count as pages that came back, even
    when the bitmap saw no access (a reading the TLB hid)."""
    g = policy.RefaultGuard(cold_for=2, rate_bytes_per_s=None, threshold_pct=5.0, min_pages=100)
    policy.guard_advised(g, 1, 1000)
    policy.guard_refaults(g, 2, {}, major_faults=40)     # 4%: not above
    assert g.backoffs == 0 and g.window_ratio(2) == (40, 1000)
    policy.guard_refaults(g, 3, {1: 5}, major_faults=30)  # 70 of 1000: 7%
    assert g.backoffs == 1 and not g.stopped


def test_guard_stops_at_once_on_heavy_damage():
    """Damage over four times the threshold stops acting the round it shows,
    without trying slower first."""
    g = policy.RefaultGuard(cold_for=2, rate_bytes_per_s=None, threshold_pct=5.0, min_pages=100)
    policy.guard_advised(g, 1, 1000)
    policy.guard_refaults(g, 2, {}, major_faults=600)
    assert g.stopped and g.backoffs == 0
    assert "60.0%" in g.reason and "major faults" in g.reason


def test_guard_window_forgets_old_rounds():
    g = policy.RefaultGuard(cold_for=1, rate_bytes_per_s=None, window_rounds=3, min_pages=1)
    policy.guard_advised(g, 1, 100)
    policy.guard_refaults(g, 2, {})
    policy.guard_refaults(g, 4, {})
    assert 1 not in g.advised
    # A late refault of a page advised outside the window does not count.
    policy.guard_refaults(g, 5, {1: 100})
    assert g.backoffs == 0


# -- tiering ------------------------------------------------------------------

def test_tier_gap_and_cooldown():
    # hot streaks / idle streaks over 6 pages, thresholds H=2, C=3.
    st = state(range(6), hot=[2, 1, 0, 0, 5, 0], idle=[0, 0, 3, 2, 0, 4], acted=[-1, -1, -1, -1, 9, 8])
    present = np.ones(6, bool)
    hot, cold = policy.tier_candidates(st, present, hot_rounds=2, cold_rounds=3, round_no=10, cooldown=3)
    # page 1 (hot once) and page 3 (idle twice) are in the gap; page 4 moved
    # last round and rests; page 5 moved 2 rounds ago: rests (cooldown 3).
    assert hot.tolist() == [T, F, F, F, F, F]
    assert cold.tolist() == [F, F, T, F, F, F]
    hot, cold = policy.tier_candidates(st, present, 2, 3, round_no=11, cooldown=3)
    assert cold.tolist() == [F, F, T, F, F, T]


def test_tier_plan_promotes_first_within_cap():
    hot = np.array([T, T, F, F, T])
    cold = np.array([F, F, T, T, F])
    node = np.array([1, 1, 0, 0, 0], np.int32)      # fast 0, slow 1
    hs = np.array([3, 5, 0, 0, 9], np.uint16)
    ids = np.array([0, 0, 4, 7, 0], np.uint16)
    p = policy.tier_plan(hot, cold, node, hs, ids, fast=0, slow=1, cap_pages=None)
    # Hot page 4 is already on the fast node: nothing to do for it.
    assert p.promote.tolist() == [0, 1] and p.demote.tolist() == [2, 3]
    assert (p.hot_pages, p.cold_pages, p.promote_pages, p.demote_pages) == (3, 2, 2, 2)
    p = policy.tier_plan(hot, cold, node, hs, ids, 0, 1, cap_pages=3)
    assert p.promote.tolist() == [0, 1] and p.demote.tolist() == [3]     # coldest first
    p = policy.tier_plan(hot, cold, node, hs, ids, 0, 1, cap_pages=1)
    assert p.promote.tolist() == [1] and p.demote.tolist() == []          # hottest first


def test_tier_plan_ignores_pages_with_error_status():
    hot = np.array([T, T])
    node = np.array([-2, 1], np.int32)       # -ENOENT: not present any more
    p = policy.tier_plan(hot, ~hot, node, np.array([2, 2], np.uint16), np.zeros(2, np.uint16), 0, 1, None)
    assert p.promote.tolist() == [1]


def test_tier_plan_weights_thp_heads():
    hot = np.array([T, T])
    node = np.array([1, 1], np.int32)
    w = np.array([512, 1])
    p = policy.tier_plan(hot, ~hot, node, np.array([5, 4], np.uint16), np.zeros(2, np.uint16), 0, 1, 100, w)
    # The THP (512 pages) does not fit a 100-page cap; the small page does.
    assert p.promote.tolist() == [1] and p.promote_pages == 1 and p.hot_pages == 513


def test_huge_heads_keeps_one_entry_per_thp():
    vpns = np.arange(1024, 1024 + 1030)
    huge = np.zeros(vpns.size, bool)
    huge[:1024] = True
    idx = np.array([0, 1, 511, 512, 700, 1024, 1025])
    kept, w = policy.huge_heads(idx, huge, vpns)
    assert kept.tolist() == [0, 512, 1024, 1025] and w.tolist() == [512, 512, 1, 1]


def test_check_thresholds():
    assert policy.check_thresholds(1, 1) is None
    assert "at least 1" in policy.check_thresholds(0, 3)


def simulate(pattern, hot_rounds, cold_rounds, cooldown):
    """Drive one page through rounds of accessed(True)/idle(False) on a
    two-node machine (fast 0, slow 1); return where it was after each round."""
    st = policy.PageState.empty(np.array([0]))
    node = 1
    where = []
    for r, acc in enumerate(pattern, start=1):
        policy.update_streaks(st, np.array([T]), np.array([not acc]))
        hot, cold = policy.tier_candidates(st, np.array([T]), hot_rounds, cold_rounds, r, cooldown)
        p = policy.tier_plan(hot, cold, np.array([node], np.int32), st.hot_streak, st.idle_streak, 0, 1, None)
        if p.promote.size:
            node, st.acted_round[0] = 0, r
        elif p.demote.size:
            node, st.acted_round[0] = 1, r
        where.append(node)
    return where


def test_alternating_page_never_moves():
    # Accessed every other round: never H=2 rounds hot in a row, never C=2 idle.
    assert simulate([T, F] * 6, 2, 2, 2) == [1] * 12


def test_hot_then_cold_moves_once_each_way():
    where = simulate([T, T, T, F, F, F, F], 2, 3, 3)
    assert where == [1, 0, 0, 0, 0, 1, 1]


def test_cooldown_delays_a_move_back():
    # Promoted in round 2; cold from round 3 on, but rests until round 2+5.
    where = simulate([T, T, F, F, F, F, F, F], 2, 1, 5)
    assert where == [1, 0, 0, 0, 0, 0, 1, 1]


def test_merge_counts():
    assert policy.merge_counts({"-EBUSY": 1}, {"-EBUSY": 2, "-ENOMEM": 1}) == {"-EBUSY": 3, "-ENOMEM": 1}


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_pick_never_exceeds_limit(n):
    rng = np.random.default_rng(n)
    mask = rng.random(5000) < 0.5
    got = policy.pick(mask, rng.integers(0, 10, 5000), n)
    assert got.size == min(n, int(mask.sum())) and mask[got].all() and np.all(np.diff(got) > 0)


# -- decoding what the kernel says ---------------------------------------------

def test_move_pages_status_names_and_meanings():
    assert numa.status_name(-errno.EBUSY) == "-EBUSY"
    assert numa.status_name(-errno.ENOMEM) == "-ENOMEM"
    assert numa.status_name(3) == "node 3"
    for name in ("-EBUSY", "-ENOMEM", "-EACCES", "-EFAULT", "-ENOENT"):
        assert numa.STATUS_MEANING[name]
    assert numa.failures_by_name(np.array([-16, -16, 0, -12], np.int32)) == {"-EBUSY": 2, "-ENOMEM": 1}
    assert numa.pages_by_node(np.array([0, 1, 1, -2], np.int32)) == {0: 1, 1: 2}


def test_node_meminfo_parse():
    text = "Node 1 MemTotal:        1546908 kB\nNode 1 MemFree:         1533792 kB\nNode 1 MemUsed:  13116 kB\n"
    assert numa.parse_node_meminfo(text) == {"MemTotal": 1546908 * 1024, "MemFree": 1533792 * 1024,
                                             "MemUsed": 13116 * 1024}


def test_failed_moves_rest_longer_each_time():
    st = state([1, 2])
    present = np.ones(2, bool)
    st.idle_streak[:] = 5
    policy.record_tries(st, np.array([0, 1]), np.array([F, T]), round_no=1)
    assert st.fails.tolist() == [1, 0]
    cold_at = [r for r in range(2, 12) if policy.tier_candidates(st, present, 1, 1, r, cooldown=2)[1][0]]
    assert cold_at[0] == 1 + 4          # cooldown 2, doubled once
    policy.record_tries(st, np.array([0]), np.array([F]), round_no=5)
    cold_at = [r for r in range(6, 20) if policy.tier_candidates(st, present, 1, 1, r, cooldown=2)[1][0]]
    assert cold_at[0] == 5 + 8
    policy.record_tries(st, np.array([0]), np.array([T]), round_no=13)
    assert st.fails.tolist() == [0, 0]
    # Page 2 moved fine at round 1: plain cooldown.
    assert policy.tier_candidates(st, present, 1, 1, 3, cooldown=2)[1][1]


def test_carry_keeps_failure_counts():
    prev = state([4, 5])
    prev.fails[:] = [3, 0]
    assert policy.carry(prev, np.array([3, 4])).fails.tolist() == [0, 3]


# -- tiering by capacity (the ratio policy) -------------------------------------

def test_heat_order_idle_age_then_streak_then_count_then_placement():
    idle = np.array([0, 0, 3, 0, 1, 3], np.uint16)
    hot = np.array([1, 4, 0, 4, 0, 0], np.uint16)
    acc = np.array([9, 4, 1, 5, 2, 1], np.uint16)
    on_fast = np.array([F, F, F, F, F, T])
    # 3 and 1 have the longest run (3 more rounds in all); 0 ran once;
    # 4 was idle 1 round; 2 and 5 tie on everything: 5 is on fast already.
    assert policy.heat_order(idle, hot, acc, on_fast).tolist() == [3, 1, 0, 4, 5, 2]


def test_capacity_plan_keeps_the_hottest_that_fit():
    # Entries hottest first 0..5; fast 0, slow 1.  Capacity 3 pages.
    order = np.arange(6)
    node = np.array([1, 0, 1, 0, 0, 1], np.int32)
    may = np.ones(6, bool)
    p = policy.capacity_plan(order, node, may, 0, 1, capacity_pages=3, cap_pages=None)
    assert p.promote.tolist() == [0, 2] and p.demote.tolist() == [3, 4]
    assert (p.hot_pages, p.cold_pages) == (3, 3)
    # 3 of ours on fast (1, 3, 4), no room: half the cap demotes (coldest
    # first) to make the room the other half promotes into (hottest first).
    p = policy.capacity_plan(order, node, may, 0, 1, capacity_pages=3, cap_pages=2)
    assert p.demote.tolist() == [4] and p.promote.tolist() == [0]
    p = policy.capacity_plan(order, node, may, 0, 1, capacity_pages=3, cap_pages=1)
    assert p.demote.tolist() == [4] and p.promote.tolist() == []


def test_capacity_plan_never_exceeds_the_capacity_and_respects_rest():
    order = np.arange(4)
    node = np.array([1, 1, 0, 0], np.int32)
    may = np.array([T, T, F, T])          # entry 2 rests: it stays on fast and takes room
    p = policy.capacity_plan(order, node, may, 0, 1, capacity_pages=2, cap_pages=None)
    assert p.demote.tolist() == [3] and p.promote.tolist() == [0]
    on_fast_after = 2 - p.demote_pages + p.promote_pages
    assert on_fast_after <= 2


def test_capacity_plan_weights_thp_heads_and_skips_other_nodes():
    order = np.array([0, 2, 1])           # entry 3 is on node 5: not in the order
    node = np.array([1, 0, 0, 5], np.int32)
    w = np.array([512, 1, 1, 1])
    p = policy.capacity_plan(order, node, np.ones(4, bool), 0, 1, capacity_pages=513, cap_pages=None, weight=w)
    # The THP and entry 2 fit (513); entry 1 does not and is on fast: its
    # demotion makes the room the THP needs.
    assert p.promote.tolist() == [0] and p.demote.tolist() == [1] and p.promote_pages == 512
    assert p.hot_pages == 513 and p.cold_pages == 1


def test_accesses_count_rounds_accessed_and_carry():
    st = policy.PageState.empty(np.array([1, 2], np.int64))
    for idle in ([F, T], [F, F], [T, F]):
        policy.update_streaks(st, np.ones(2, bool), np.array(idle))
    assert st.accesses.tolist() == [2, 2]
    assert policy.carry(st, np.array([2, 3], np.int64)).accesses.tolist() == [2, 0]
