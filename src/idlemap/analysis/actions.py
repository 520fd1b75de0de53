"""Policy for acting on idle memory: which pages to reclaim or move, how
fast, and when to stop.  Pure functions over numpy arrays -- no I/O -- so
every rule is unit-tested; the commands do the syscalls.

Per-page history is kept across scan rounds as a :class:`PageState`
indexed by virtual page number (vpn): consecutive rounds idle, consecutive
rounds accessed, the round the page was last acted upon, and failed moves
in a row.  A round's reading (present/idle per page) is a page_idle
``IdleMap`` (idlemap.scan.Scanner, re-marking every round).

Thresholds, and the anti-thrash gap between them:
  * cold  = present and idle in each of the last C rounds (idle streak >= C)
  * hot   = accessed in each of the last H rounds        (hot streak >= H)
A page with a mixed recent history (accessed in some of the last rounds,
not all) is neither: it stays where it is.  A page just moved also has to
wait ``cooldown`` rounds before it may move again (longer after failed
tries).  So a page demoted as
cold must be accessed H rounds in a row before it is promoted back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

STREAK_MAX = np.iinfo(np.uint16).max
NEVER = -1


@dataclass
class PageState:
    """Per-page history, aligned with ``vpns`` (sorted virtual page numbers)."""
    vpns: np.ndarray                  # int64, strictly increasing
    idle_streak: np.ndarray           # uint16: consecutive rounds present and idle
    hot_streak: np.ndarray            # uint16: consecutive rounds accessed
    acted_round: np.ndarray           # int32: round last advised/moved, NEVER if not
    fails: np.ndarray                 # uint8: failed tries in a row (moves the kernel refused)
    accesses: np.ndarray              # uint16: rounds accessed since first seen (the ratio policy's heat)

    @classmethod
    def empty(cls, vpns: np.ndarray) -> "PageState":
        n = vpns.size
        return cls(vpns.astype(np.int64, copy=False), np.zeros(n, np.uint16), np.zeros(n, np.uint16),
                   np.full(n, NEVER, np.int32), np.zeros(n, np.uint8), np.zeros(n, np.uint16))


def carry(prev: PageState | None, vpns: np.ndarray) -> PageState:
    """Re-index the history onto this round's pages: pages still mapped keep
    their counters, new pages start from zero, unmapped ones are dropped."""
    vpns = vpns.astype(np.int64, copy=False)
    if prev is None:
        return PageState.empty(vpns)
    if prev.vpns.size == vpns.size and np.array_equal(prev.vpns, vpns):
        return replace(prev, vpns=vpns)
    out = PageState.empty(vpns)
    if prev.vpns.size == 0 or vpns.size == 0:
        return out
    pos = np.searchsorted(prev.vpns, vpns)
    pos_c = np.minimum(pos, prev.vpns.size - 1)
    hit = prev.vpns[pos_c] == vpns
    src = pos_c[hit]
    out.idle_streak[hit] = prev.idle_streak[src]
    out.hot_streak[hit] = prev.hot_streak[src]
    out.acted_round[hit] = prev.acted_round[src]
    out.fails[hit] = prev.fails[src]
    out.accesses[hit] = prev.accesses[src]
    return out


def update_streaks(state: PageState, present: np.ndarray, idle: np.ndarray) -> PageState:
    """Advance the streaks by one round's reading (in place; returned too).
    Pages not present (holes, swapped out) have no streak."""
    idle_now = present & idle
    accessed = present & ~idle
    state.idle_streak = np.where(idle_now, np.minimum(state.idle_streak.astype(np.uint32) + 1, STREAK_MAX),
                                 0).astype(np.uint16)
    state.hot_streak = np.where(accessed, np.minimum(state.hot_streak.astype(np.uint32) + 1, STREAK_MAX),
                                0).astype(np.uint16)
    state.accesses = np.minimum(state.accesses.astype(np.uint32) + accessed, STREAK_MAX).astype(np.uint16)
    return state


def coalesce(vpns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted page numbers -> (first page, page count) of each run of
    consecutive pages.  Runs are never merged across a gap: the pages in a
    gap were not chosen (they may be hot)."""
    vpns = np.asarray(vpns, dtype=np.int64)
    if vpns.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    breaks = np.nonzero(np.diff(vpns) != 1)[0] + 1
    starts = vpns[np.concatenate(([0], breaks))]
    ends = vpns[np.concatenate((breaks - 1, [vpns.size - 1]))] + 1
    return starts, ends - starts


def budget_pages(rate_bytes_per_s: float | None, period_s: float, page_size: int) -> int | None:
    """Pages one round may act on under a rate limit (None: no limit).
    The nominal period is used, not the measured one, so the budget is
    deterministic: R MiB/s over rounds of S s is R x S MiB per round."""
    if rate_bytes_per_s is None:
        return None
    return max(0, int(rate_bytes_per_s * period_s // page_size))


def pick(mask: np.ndarray, priority: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices where ``mask`` holds, at most ``limit`` of them, highest
    ``priority`` first (ties: lower index first); returned sorted."""
    idx = np.nonzero(mask)[0]
    if limit is None or idx.size <= limit:
        return idx
    order = np.argsort(-priority[idx].astype(np.int64), kind="stable")
    return np.sort(idx[order[:limit]])


# -- reclaim -----------------------------------------------------------------

def reclaim_candidates(state: PageState, present: np.ndarray, cold_for: int, round_no: int) -> np.ndarray:
    """Pages present and idle for ``cold_for`` rounds, not advised already.
    A page advised earlier that is still present and idle (pageout skipped
    it, or MADV_COLD left it resident) is tried again ``cold_for`` rounds
    later."""
    fresh = (state.acted_round == NEVER) | (round_no - state.acted_round >= cold_for)
    return present & (state.idle_streak >= cold_for) & fresh


def take_refaults(state: PageState, accessed: np.ndarray) -> dict[int, int]:
    """Pages advised earlier and accessed again this round ("came back hot"):
    clear their mark (so they may be reclaimed again once cold) and return
    their count keyed by the round they were advised in."""
    back = (state.acted_round != NEVER) & accessed
    if not back.any():
        return {}
    rounds, counts = np.unique(state.acted_round[back], return_counts=True)
    state.acted_round[back] = NEVER
    return {int(r): int(c) for r, c in zip(rounds, counts)}


@dataclass
class RefaultGuard:
    """Back-off state: when too many reclaimed pages come back hot, wait
    longer before calling a page cold (cold_for doubles) and go slower
    (the rate halves); after ``max_backoffs`` back-offs, stop acting."""
    cold_for: int
    rate_bytes_per_s: float | None
    threshold_pct: float = 5.0
    window_rounds: int = 5
    min_pages: int = 256              # judge a ratio only over at least this many pages
    max_backoffs: int = 3
    backoffs: int = 0
    stopped: bool = False
    reason: str = ""
    advised: dict[int, int] = field(default_factory=dict)    # round -> pages advised
    refaults: dict[int, int] = field(default_factory=dict)   # round advised -> pages back
    # round -> the target's major faults in that round's window: the
    # kernel's count of pages brought back, independent of our own reading
    major: dict[int, int] = field(default_factory=dict)

    def window_ratio(self, round_no: int) -> tuple[int, int]:
        """(refaulted, advised) over pages advised in the last window_rounds."""
        lo = round_no - self.window_rounds
        adv = sum(v for r, v in self.advised.items() if r > lo)
        back = sum(v for r, v in self.refaults.items() if r > lo)
        # Whichever says more came back: a page paged out and touched again
        # is a major fault even if our reading missed the access.
        back = max(back, sum(v for r, v in self.major.items() if r > lo))
        return back, adv


def guard_refaults(g: RefaultGuard, round_no: int, refaults_by_round: dict[int, int],
                   major_faults: int = 0) -> RefaultGuard:
    """Record this round's refaults (keyed by the round the pages were
    advised in) and the target's major faults during its window; back off,
    or stop, if the ratio over the window is above the threshold.  Call
    every round, before choosing this round's pages, so acting stops the
    round after damage shows.  Mutates and returns ``g``."""
    for r, c in refaults_by_round.items():
        g.refaults[r] = g.refaults.get(r, 0) + c
    if major_faults:
        g.major[round_no] = g.major.get(round_no, 0) + major_faults
    back, adv = g.window_ratio(round_no)
    if not g.stopped and adv >= g.min_pages and 100.0 * back > g.threshold_pct * adv:
        pct = 100.0 * back / adv
        # Damage several times the threshold is no time to try again slower.
        if g.backoffs >= g.max_backoffs or pct > 4 * g.threshold_pct:
            g.stopped = True
            g.reason = (f"stopped: {pct:.1f}% of recently reclaimed pages came back ({back} pages: refaults "
                        f"or the target's major faults) after {g.backoffs} back-offs "
                        f"(threshold {g.threshold_pct:g}%)")
        else:
            g.backoffs += 1
            g.cold_for *= 2
            if g.rate_bytes_per_s is not None:
                g.rate_bytes_per_s /= 2
            g.reason = (f"backed off: {pct:.1f}% refaults > {g.threshold_pct:g}%, now cold after "
                        f"{g.cold_for} rounds" + ("" if g.rate_bytes_per_s is None else
                                                   f" at {g.rate_bytes_per_s / (1 << 20):.2f} MiB/s"))
            # Judge the new settings on their own pages only.
            g.advised.clear()
            g.refaults.clear()
            g.major.clear()
    lo = round_no - g.window_rounds
    for d in (g.advised, g.refaults, g.major):
        for r in [r for r in d if r <= lo]:
            del d[r]
    return g


def guard_advised(g: RefaultGuard, round_no: int, pages: int) -> RefaultGuard:
    """Record the pages advised this round."""
    if pages:
        g.advised[round_no] = g.advised.get(round_no, 0) + pages
    return g


# -- tiering -----------------------------------------------------------------

@dataclass(frozen=True)
class TierPlan:
    """Indices (into the round's page arrays) to promote and to demote."""
    promote: np.ndarray
    demote: np.ndarray
    promote_pages: int      # pages they stand for (a THP head counts 512)
    demote_pages: int
    hot_pages: int          # hot pages that may move this round (any node)
    cold_pages: int         # cold pages that may move this round (any node)


MAX_FAIL_SHIFT = 6


def rested(state: PageState, round_no: int, cooldown: int) -> np.ndarray:
    """Pages that may move this round.  A page rests ``cooldown`` rounds
    after a try, doubled for each failed try in a row (up to 64x): a page
    the kernel keeps refusing (shared: -EACCES) must not take the cap every
    time its rest is over."""
    rest = np.int64(cooldown) << np.minimum(state.fails, MAX_FAIL_SHIFT).astype(np.int64)
    return (state.acted_round == NEVER) | (round_no - state.acted_round.astype(np.int64) >= rest)


def tier_candidates(state: PageState, present: np.ndarray, hot_rounds: int, cold_rounds: int,
                    round_no: int, cooldown: int) -> tuple[np.ndarray, np.ndarray]:
    """(hot, cold) masks of pages that may move this round (:func:`rested`)."""
    ok = rested(state, round_no, cooldown)
    hot = present & (state.hot_streak >= hot_rounds)
    cold = present & (state.idle_streak >= cold_rounds)
    return hot & ok, cold & ok


def tier_plan(hot: np.ndarray, cold: np.ndarray, node: np.ndarray, hot_streak: np.ndarray,
              idle_streak: np.ndarray, fast: int, slow: int, cap_pages: int | None,
              weight: np.ndarray | None = None) -> TierPlan:
    """Promote hot pages found on ``slow``, demote cold pages found on
    ``fast``, at most ``cap_pages`` in all.  Promotions go first: a hot page
    on slow memory costs on every access, a cold page on fast memory only
    takes room.  All arrays are aligned (one entry per candidate page);
    ``node`` is each page's current node (or -errno from move_pages);
    ``weight`` is the pages an entry stands for (512 for a THP head).
    Returns indices into those arrays, most extreme streaks first."""
    w = np.ones(node.size, np.int64) if weight is None else weight.astype(np.int64)
    prom = _pick_weighted(hot & (node == slow), hot_streak, w, cap_pages)
    left = None if cap_pages is None else cap_pages - int(w[prom].sum())
    dem = _pick_weighted(cold & (node == fast), idle_streak, w, left)
    return TierPlan(prom, dem, int(w[prom].sum()), int(w[dem].sum()), int(w[hot].sum()), int(w[cold].sum()))


def _pick_weighted(mask, priority, weight, limit) -> np.ndarray:
    """Like :func:`pick` with entries worth ``weight`` pages each: the
    longest prefix (by priority) that fits ``limit``, then single pages
    further down that still fit (a THP that does not fit is not a wall)."""
    idx = np.nonzero(mask)[0]
    if limit is None:
        return idx
    if limit <= 0 or idx.size == 0:
        return idx[:0]
    order = idx[np.argsort(-priority[idx].astype(np.int64), kind="stable")]
    w = weight[order]
    keep = np.cumsum(w) <= limit
    room = limit - int(w[keep].sum())
    if room > 0:
        small = np.nonzero(~keep & (w == 1))[0][:room]
        keep[small] = True
    return np.sort(order[keep])


# -- tiering by capacity (memtierd's ratio policy) ------------------------------

def heat_order(idle_streak: np.ndarray, hot_streak: np.ndarray, accesses: np.ndarray,
               on_fast: np.ndarray) -> np.ndarray:
    """Indices, hottest first: the smallest idle age (rounds since the last
    access), then the longest run of accessed rounds, then the most rounds
    accessed; among pages equal on all three, those already on the fast
    node first -- so the capacity boundary never swaps two pages with the
    same history."""
    return np.lexsort((~np.asarray(on_fast, bool), -accesses.astype(np.int64), -hot_streak.astype(np.int64),
                       idle_streak.astype(np.int64)))


def _take(idx: np.ndarray, weight: np.ndarray, budget: int) -> np.ndarray:
    """The longest prefix of ``idx`` (in its order) whose weights fit ``budget``."""
    if budget <= 0 or idx.size == 0:
        return idx[:0]
    return idx[np.cumsum(weight[idx]) <= budget]


def capacity_plan(order: np.ndarray, node: np.ndarray, may_move: np.ndarray, fast: int, slow: int,
                  capacity_pages: int, cap_pages: int | None, weight: np.ndarray | None = None) -> TierPlan:
    """Keep the hottest pages that fit ``capacity_pages`` on ``fast``, the
    rest on ``slow`` (memtierd's ratio policy with a size instead of a ratio).

    ``order`` ranks the entries hottest first (:func:`heat_order`) and holds
    only entries on ``fast`` or ``slow``; the wanted fast set is the
    longest prefix that fits.  Moves, at most ``cap_pages`` in all, never
    take the target's pages on ``fast`` above ``capacity_pages``:
    promotions into the room there is now (hottest first), then demotions
    (coldest first) -- half the budget left while promotions wait -- then
    promotions into the room they made, then more demotions.  Only entries
    with ``may_move`` move (resting pages stay, and count where they are).
    ``hot_pages``/``cold_pages`` of the plan: the wanted fast and slow sets."""
    n = node.size
    w = np.ones(n, np.int64) if weight is None else weight.astype(np.int64)
    order = np.asarray(order, np.int64)
    want = np.zeros(n, bool)
    want[order[np.cumsum(w[order]) <= capacity_pages]] = True
    in_order = np.zeros(n, bool)
    in_order[order] = True
    on_fast = (node == fast) & in_order
    left = np.iinfo(np.int64).max if cap_pages is None else int(cap_pages)
    room = capacity_pages - int(w[on_fast].sum())
    prom_all = order[(want & (node == slow) & may_move)[order]]              # hottest first
    dem_all = order[::-1][(~want & on_fast & may_move)[order[::-1]]]         # coldest first
    p1 = _take(prom_all, w, min(room, left))
    left -= int(w[p1].sum())
    room -= int(w[p1].sum())
    pending = prom_all[p1.size:]
    # With promotions waiting for room, half the budget (rounded up) makes
    # room and the other half fills it, so a tight cap still promotes.
    d1 = _take(dem_all, w, left if pending.size == 0 else left - left // 2)
    left -= int(w[d1].sum())
    room += int(w[d1].sum())
    p2 = _take(pending, w, min(room, left))
    left -= int(w[p2].sum())
    d = np.concatenate((d1, _take(dem_all[d1.size:], w, left)))
    prom = np.sort(np.concatenate((p1, p2)))
    dem = np.sort(d)
    return TierPlan(prom, dem, int(w[prom].sum()), int(w[dem].sum()), int(w[want].sum()),
                    int(w[in_order & ~want].sum()))


def record_tries(state: PageState, idx: np.ndarray, ok: np.ndarray, round_no: int) -> PageState:
    """After a move: every tried page rests from this round; failures in a
    row are counted (they lengthen the rest), a success clears them."""
    state.acted_round[idx] = round_no
    f = state.fails[idx]
    state.fails[idx] = np.where(ok, 0, np.minimum(f.astype(np.int32) + 1, 255)).astype(np.uint8)
    return state


def huge_heads(idx: np.ndarray, huge: np.ndarray, vpns: np.ndarray,
               huge_pages: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Keep one entry per transparent huge page (its 2 MiB-aligned head),
    weighted by the pages it stands for: move_pages moves a THP whole, and
    its other subpages would report -EBUSY in the same call."""
    h = huge[idx]
    keep = ~h | (vpns[idx] % huge_pages == 0)
    kept = idx[keep]
    return kept, np.where(huge[kept], huge_pages, 1).astype(np.int64)


def check_thresholds(hot_rounds: int, cold_rounds: int) -> str | None:
    """None if the thresholds make sense, else why not (one sentence)."""
    if hot_rounds < 1 or cold_rounds < 1:
        return "--hot-rounds and --cold-rounds must be at least 1"
    return None


# -- summaries ---------------------------------------------------------------

def merge_counts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out
