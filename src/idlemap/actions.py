"""Acting on what idlemap finds: proactive reclaim and NUMA tiering.

Each engine runs one *round* at a time: read which pages stayed idle since
the last round (page_idle, re-marking at once), update each page's history
(analysis/actions.py), choose pages by policy, then act with one batch of
syscalls -- process_madvise(MADV_COLD|MADV_PAGEOUT) for reclaim,
move_pages for tiering.  Commands call ``round()`` on a timer; tests call
it between workload steps, so they are exact and timing-free.

The rounds come from :class:`idlemap.scan.Scanner` (a per-page backend:
kmod where idlemap's module is loaded, else page_idle, as auto picks them);
:class:`PageRounds` adds the per-page history the policies need.
"""
from __future__ import annotations

import os
import select
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from . import rounds
from .analysis import actions as policy
from .analysis.spans import HPAGE_PAGES, spans_for
from .errors import NoSuchProcess, TargetExited, UsageError
from .kernel import numa, smaps
from .kernel import pagemap as pm
from .kernel import process_madvise as pmad
from .kernel.maps import PAGE_SHIFT, PAGE_SIZE, read_maps
from .kernel.process import ProcessId, check_same, fault_counts
from .records import IdleMap
from .scan import Scanner

MiB = 1 << 20


def check_target(proc: ProcessId, force: bool, what: str) -> None:
    """Refuse targets where acting is never right, or needs --force."""
    if proc.is_kernel_thread:
        raise UsageError(f"PID {proc.pid} ({proc.comm}) is a kernel thread: it has no user memory to {what}")
    if proc.pid == 1 and not force:
        raise UsageError(f"refusing to {what} the memory of PID 1 ({proc.comm}), the init process, "
                         "without --force")
    if proc.pid == os.getpid():
        raise UsageError(f"refusing to {what} idlemap's own memory")


class PageRounds:
    """Scan rounds (idlemap.scan.Scanner, a per-page backend) with per-page history
    by virtual address carried from round to round."""

    def __init__(self, proc: ProcessId, ranges: Iterable[tuple[int, int]] | None = None,
                 tlb_flush: str = "auto", unsafe_no_tlb_flush: bool = False):
        self.proc = proc
        # acting=True: these readings decide what is paged out or moved, so
        # they must be flushed (tlb.resolve refuses otherwise, docs/tlb.md).
        self.scanner = Scanner(proc, backend="auto", need_per_page=True, tlb_flush=tlb_flush,
                               ranges=ranges, acting=True, unsafe_no_tlb_flush=unsafe_no_tlb_flush)
        self.tlb = self.scanner.tlb
        self.state: policy.PageState | None = None
        self.map: IdleMap | None = None
        self.round = 0

    def start(self) -> None:
        """Round 0: mark every page idle."""
        self.scanner.start()

    def next(self) -> tuple[IdleMap, policy.PageState]:
        m = self.scanner.round().idle_map
        assert m is not None            # the backend is per page (need_per_page)
        if m.npages == 0:
            # An exiting process reads as no mappings at all.
            check_same(self.proc)
        self.round += 1
        st = policy.update_streaks(policy.carry(self.state, m.vpns()), m.present, m.idle)
        self.state, self.map = st, m
        return m, st

    def close(self) -> None:
        self.scanner.close()


def range_labels(m: IdleMap, first_vpns: np.ndarray) -> list[str]:
    """Mapping label of the span holding each page number."""
    if not m.spans:
        return ["?"] * len(first_vpns)
    span_first = np.array([s.first_vpn for s in m.spans], dtype=np.int64)
    at = np.searchsorted(span_first, first_vpns, side="right") - 1
    return [m.spans[max(0, i)].mapping.label for i in at.tolist()]


def present_vpns(proc: ProcessId, ranges=None) -> np.ndarray:
    """Page numbers of every present page (a fresh pagemap walk)."""
    spans = spans_for(read_maps(proc.pid), ranges)
    out = []
    with pm.Pagemap(proc.pid) as p:
        for s in spans:
            e = p.read(s.first_vpn, s.npages)
            out.append(s.first_vpn + np.nonzero((e & pm.PRESENT) != 0)[0])
    return np.concatenate(out).astype(np.int64) if out else np.empty(0, np.int64)


def placement(proc: ProcessId, ranges=None) -> dict[int, int]:
    """Pages per node of the target, asked of the kernel (move_pages status)."""
    vpns = present_vpns(proc, ranges)
    return numa.pages_by_node(numa.move_pages(proc.pid, vpns << PAGE_SHIFT))


# -- reclaim -----------------------------------------------------------------

@dataclass
class ReclaimConfig:
    cold_for: int                           # rounds idle before a page is reclaimed
    mode: str = "pageout"                   # "pageout" or "cold"
    rate_bytes_per_s: float | None = None   # None: no limit
    period_s: float = 1.0
    dry_run: bool = False
    ranges: list[tuple[int, int]] | None = None
    refault_pct: float = 5.0
    tlb_flush: str = "auto"                 # tlb.MODES less "none": actions need flushed readings
    unsafe_no_tlb_flush: bool = False


@dataclass
class ReclaimRound:
    round: int
    time_s: float                 # monotonic, at the read
    cold_for: int                 # threshold in force this round (back-offs double it)
    present_pages: int            # in the tracked ranges, at the read
    swapped_pages: int
    cold_pages: int               # idle for cold_for rounds and not advised yet
    advised_pages: int            # chosen this round (within the rate budget)
    ranges_start: np.ndarray      # the advised ranges: first VA ...
    ranges_bytes: np.ndarray      # ... and length
    range_labels: list[str]
    accepted_bytes: int           # what process_madvise reported done (0 in dry-run)
    reclaimed_pages: int          # advised pages no longer present right after
    refault_pages: int            # pages advised earlier, accessed again this round
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    note: str = ""
    dry_run: bool = False
    major_faults: int = 0         # the target's major faults during this round's window


@dataclass
class ReclaimSummary:
    pid: int
    comm: str
    mode: str
    dry_run: bool
    rounds: int
    advised_bytes: int
    reclaimed_bytes: int
    refault_bytes: int
    rss_before_bytes: int
    swap_before_bytes: int
    rss_after_bytes: int | None   # None: the target is gone
    swap_after_bytes: int | None
    backoffs: int
    cold_for_final: int
    stop_reason: str
    major_faults: int = 0         # the target's major faults from the start to its last round
    tlb_flush: str = "soft-dirty"   # what each round's mark was followed by ("none": unsafe)

    @property
    def refault_pct(self) -> float:
        return 100.0 * self.refault_bytes / self.reclaimed_or_advised if self.reclaimed_or_advised else 0.0

    @property
    def reclaimed_or_advised(self) -> int:
        return self.reclaimed_bytes if self.mode == "pageout" else self.advised_bytes


class Reclaimer:
    """Page out (or deactivate) pages idle for ``cold_for`` rounds."""

    def __init__(self, proc: ProcessId, cfg: ReclaimConfig):
        if cfg.mode not in pmad.ADVICE:
            raise UsageError(f"--mode must be one of {', '.join(pmad.ADVICE)}")
        if cfg.cold_for < 1:
            raise UsageError("--cold-for must be at least 1 round")
        self.proc, self.cfg = proc, cfg
        self.advice = pmad.ADVICE[cfg.mode]
        self.pidfd = pmad.pidfd_open(proc.pid)
        self._closers = [lambda: os.close(self.pidfd)]
        try:
            # The pidfd must be the process we identified, not a PID reuse.
            check_same(proc)
            self.pagemap = pm.Pagemap(proc.pid)
            self._closers.append(self.pagemap.close)
            self.rounds = PageRounds(proc, cfg.ranges, cfg.tlb_flush, cfg.unsafe_no_tlb_flush)
            self._closers.append(self.rounds.close)
            roll = smaps.read_rollup(proc.pid)
            # The target's major faults (pages brought back from swap or
            # disk): the kernel's own measure of what reclaim cost it.
            self.majflt_start = self._majflt_last = fault_counts(proc.pid)[1]
        except BaseException:
            self.close()
            raise
        self.rss_before, self.swap_before = roll.get("Rss", 0), roll.get("Swap", 0)
        self.guard = policy.RefaultGuard(cfg.cold_for, cfg.rate_bytes_per_s, cfg.refault_pct)
        self.advised_pages = self.reclaimed_pages = self.refault_pages = 0
        self.gone = False

    def start(self) -> None:
        self.rounds.start()

    def round(self) -> ReclaimRound:
        try:
            return self._round()
        except NoSuchProcess:
            # An exiting task can lose its mm before it turns zombie: after
            # this, its /proc files read empty rather than fail.
            self.gone = True
            raise

    def _round(self) -> ReclaimRound:
        m, st = self.rounds.next()
        r = self.rounds.round
        majflt = fault_counts(self.proc.pid)[1]
        major, self._majflt_last = majflt - self._majflt_last, majflt
        accessed = m.present & ~m.idle
        back = policy.take_refaults(st, accessed)
        backoffs = self.guard.backoffs
        was_stopped = self.guard.stopped
        # Judged only once something was advised: before that, the
        # target's major faults are its own business (file reads...).
        policy.guard_refaults(self.guard, r, back, major if self.advised_pages else 0)
        note = self.guard.reason if (self.guard.backoffs != backoffs or self.guard.stopped != was_stopped) else ""
        if self.guard.stopped:
            cand = np.zeros(m.npages, dtype=bool)
        else:
            cand = policy.reclaim_candidates(st, m.present, self.guard.cold_for, r)
        limit = policy.budget_pages(self.guard.rate_bytes_per_s, self.cfg.period_s, PAGE_SIZE)
        idx = policy.pick(cand, st.idle_streak, limit)
        first, npages = policy.coalesce(st.vpns[idx])
        starts, lengths = first << PAGE_SHIFT, npages << PAGE_SHIFT
        refaults = sum(back.values())
        accepted = reclaimed = 0
        failed: list = []
        if not self.cfg.dry_run:
            self.refault_pages += refaults
        if idx.size and not self.cfg.dry_run:
            res = pmad.process_madvise(self.pidfd, self.proc.pid, starts, lengths, self.advice)
            accepted, failed = res.advised_bytes, res.failed
            st.acted_round[idx] = r
            policy.guard_advised(self.guard, r, int(idx.size))
            # Counted before the check below, which fails if the target exits.
            self.advised_pages += int(idx.size)
            reclaimed = self._not_resident(m, idx)
            self.reclaimed_pages += reclaimed
        out = ReclaimRound(
            round=r, time_s=m.time_s, cold_for=self.guard.cold_for,
            present_pages=int(np.count_nonzero(m.present)), swapped_pages=int(np.count_nonzero(m.swapped)),
            cold_pages=int(np.count_nonzero(cand)), advised_pages=int(idx.size),
            ranges_start=starts, ranges_bytes=lengths, range_labels=range_labels(m, first),
            accepted_bytes=accepted, reclaimed_pages=reclaimed, refault_pages=refaults,
            failed=failed, note=note, dry_run=self.cfg.dry_run, major_faults=major)
        return out

    def _not_resident(self, m: IdleMap, idx: np.ndarray) -> int:
        """How many of the advised pages are no longer present (a pagemap
        read per span, over the advised part only)."""
        gone = 0
        for s in m.spans:
            lo, hi = np.searchsorted(idx, [s.offset, s.offset + s.npages])
            if lo == hi:
                continue
            sub = idx[lo:hi] - s.offset
            e = self.pagemap.read(s.first_vpn + int(sub[0]), int(sub[-1] - sub[0]) + 1)
            gone += int(np.count_nonzero((e[sub - sub[0]] & pm.PRESENT) == 0))
        return gone

    def summary(self, stop_reason: str) -> ReclaimSummary:
        rss = swap = None
        try:
            if not self.gone:
                roll = smaps.read_rollup(self.proc.pid)
                check_same(self.proc)
                rss, swap = roll.get("Rss", 0), roll.get("Swap", 0)
        except NoSuchProcess:
            pass
        return ReclaimSummary(
            pid=self.proc.pid, comm=self.proc.comm, mode=self.cfg.mode, dry_run=self.cfg.dry_run,
            rounds=self.rounds.round, advised_bytes=self.advised_pages * PAGE_SIZE,
            reclaimed_bytes=self.reclaimed_pages * PAGE_SIZE, refault_bytes=self.refault_pages * PAGE_SIZE,
            rss_before_bytes=self.rss_before, swap_before_bytes=self.swap_before,
            rss_after_bytes=rss, swap_after_bytes=swap, backoffs=self.guard.backoffs,
            cold_for_final=self.guard.cold_for, stop_reason=self.guard.reason if self.guard.stopped else stop_reason,
            major_faults=self._majflt_last - self.majflt_start, tlb_flush=self.rounds.tlb.flush)

    def close(self) -> None:
        for c in reversed(self._closers):
            try:
                c()
            except OSError:
                pass
        self._closers = []

    def __enter__(self) -> "Reclaimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- tiering -----------------------------------------------------------------

@dataclass
class TierConfig:
    fast: int
    slow: int
    hot_rounds: int = 2
    cold_rounds: int = 3
    cap_bytes: int | None = None            # per round (period)
    period_s: float = 1.0
    dry_run: bool = False
    ranges: list[tuple[int, int]] | None = None
    cooldown_rounds: int | None = None      # default max(hot_rounds, cold_rounds)
    tlb_flush: str = "auto"
    unsafe_no_tlb_flush: bool = False
    # The capacity policy (memtierd's ratio policy): keep the hottest pages
    # that fit on the fast node, the rest on the slow one.  At most one of:
    fast_capacity_bytes: int | None = None  # the target's share of the fast node
    fast_ratio: float | None = None         # ... as a share of its resident pages (0 < R <= 1)

    @property
    def by_capacity(self) -> bool:
        return self.fast_capacity_bytes is not None or self.fast_ratio is not None

    @property
    def first_plan_round(self) -> int:
        # Ranking by heat needs two readings (one access and one idle age);
        # the streak policy needs its thresholds' rounds.
        return 2 if self.by_capacity else max(self.hot_rounds, self.cold_rounds)

    @property
    def cooldown(self) -> int:
        return self.cooldown_rounds if self.cooldown_rounds is not None else max(self.hot_rounds, self.cold_rounds)


@dataclass
class TierRound:
    round: int
    time_s: float
    hot_pages: int                # hot pages that may move (any node)
    cold_pages: int
    promote_pages: int            # planned: hot on the slow node
    demote_pages: int             # planned: cold on the fast node
    promoted_pages: int           # moved for real (status == target node)
    demoted_pages: int
    failed: dict[str, int]        # status name -> pages
    promote_vpns: np.ndarray      # the planned pages (a THP by its head)
    demote_vpns: np.ndarray
    plan_ranges: list[tuple[str, int, int, str]]   # (direction, first VA, bytes, mapping)
    dry_run: bool = False
    capacity_pages: int | None = None   # capacity policy: the target's room on the fast node this round


@dataclass
class TierSummary:
    pid: int
    comm: str
    fast: int
    slow: int
    dry_run: bool
    rounds: int
    promoted_pages: int
    demoted_pages: int
    failed: dict[str, int]
    pages_by_node_before: dict[int, int]
    pages_by_node_after: dict[int, int] | None     # None: the target is gone
    node_used_before_bytes: dict[int, int]
    node_used_after_bytes: dict[int, int]
    stop_reason: str
    capacity_pages: int | None = None   # capacity policy: the last round's room on the fast node


class Tierer:
    """Promote hot pages to the fast node, demote cold ones to the slow one."""

    def __init__(self, proc: ProcessId, cfg: TierConfig):
        why = policy.check_thresholds(cfg.hot_rounds, cfg.cold_rounds)
        if why:
            raise UsageError(why)
        if cfg.fast == cfg.slow:
            raise UsageError("--fast and --slow must be different nodes")
        if cfg.fast_capacity_bytes is not None and cfg.fast_ratio is not None:
            raise UsageError("give --fast-capacity or --fast-ratio, not both")
        if cfg.fast_ratio is not None and not 0 < cfg.fast_ratio <= 1:
            raise UsageError(f"--fast-ratio must be above 0 and at most 1, not {cfg.fast_ratio:g}")
        if cfg.fast_capacity_bytes is not None and cfg.fast_capacity_bytes < 0:
            raise UsageError("--fast-capacity must not be negative")
        online = numa.online_nodes()
        for n in (cfg.fast, cfg.slow):
            if n not in online:
                raise UsageError(f"NUMA node {n} is not online here (online: "
                                 f"{','.join(map(str, online)) or 'none'})")
        self.proc, self.cfg = proc, cfg
        # move_pages takes a bare PID; a pidfd of the process we identified
        # tells, right before each move, that it is still alive -- and a
        # live process's PID cannot have been given to another.
        self.pidfd = pmad.pidfd_open(proc.pid)
        try:
            check_same(proc)
            self.rounds = PageRounds(proc, cfg.ranges, cfg.tlb_flush, cfg.unsafe_no_tlb_flush)
        except BaseException:
            os.close(self.pidfd)
            raise
        try:
            self.before = placement(proc, cfg.ranges)
            self.mem_before = {n: numa.node_memory(n).used_bytes for n in (cfg.fast, cfg.slow)}
        except BaseException:
            self.close()
            raise
        self.promoted = self.demoted = 0
        self.capacity_pages: int | None = None
        self.failed: dict[str, int] = {}
        self.cap_pages = None if cfg.cap_bytes is None else int(cfg.cap_bytes // PAGE_SIZE)
        self.gone = False

    def start(self) -> None:
        self.rounds.start()

    def round(self) -> TierRound:
        try:
            return self._round()
        except NoSuchProcess:
            self.gone = True          # see Reclaimer.round
            raise

    def _round(self) -> TierRound:
        m, st = self.rounds.next()
        r = self.rounds.round
        cfg = self.cfg
        if cfg.by_capacity:
            cand, weight, node, plan = self._capacity_plan(m, st, r)
        else:
            hot, cold = policy.tier_candidates(st, m.present, cfg.hot_rounds, cfg.cold_rounds, r, cfg.cooldown)
            cand, weight = policy.huge_heads(np.nonzero(hot | cold)[0], m.huge, st.vpns, HPAGE_PAGES)
            self._still_alive()
            node = numa.move_pages(self.proc.pid, st.vpns[cand] << PAGE_SHIFT)
            plan = policy.tier_plan(hot[cand], cold[cand], node, st.hot_streak[cand], st.idle_streak[cand],
                                 cfg.fast, cfg.slow, self.cap_pages, weight)
        addrs = st.vpns[cand] << PAGE_SHIFT
        promoted = demoted = 0
        failed: dict[str, int] = {}
        if (plan.promote.size or plan.demote.size) and not cfg.dry_run:
            # Demotions first in the call: they make the room on the fast
            # node that the promotions (capacity policy) are sized to.
            nd = plan.demote.size
            sel = np.concatenate((plan.demote, plan.promote))
            target = np.concatenate((np.full(nd, cfg.slow, np.int32),
                                     np.full(plan.promote.size, cfg.fast, np.int32)))
            self._still_alive()
            status = numa.move_pages(self.proc.pid, addrs[sel], target)
            ok = status == target
            w = weight[sel]
            demoted = int(w[:nd][ok[:nd]].sum())
            promoted = int(w[nd:][ok[nd:]].sum())
            failed = numa.failures_by_name(status)
            elsewhere = int(np.count_nonzero((status >= 0) & ~ok))
            if elsewhere:
                failed["on another node"] = elsewhere
            # Tried pages rest too, failed ones longer each time (-EACCES...).
            policy.record_tries(st, cand[sel], ok, r)
            self.promoted += promoted
            self.demoted += demoted
            self.failed = policy.merge_counts(self.failed, failed)
        pv, dv = st.vpns[cand[plan.promote]], st.vpns[cand[plan.demote]]
        out = TierRound(r, m.time_s, plan.hot_pages, plan.cold_pages, plan.promote_pages, plan.demote_pages,
                        promoted, demoted, failed, pv, dv, _plan_ranges(m, pv, dv, weight, plan),
                        cfg.dry_run, self.capacity_pages)
        return out

    def _capacity_plan(self, m, st, r):
        """The capacity policy's round: every present page (a THP by its
        head) ranked by heat, the hottest that fit the room on the fast node
        wanted there (analysis/actions.capacity_plan)."""
        cfg = self.cfg
        cand, weight = policy.huge_heads(np.nonzero(m.present)[0], m.huge, st.vpns, HPAGE_PAGES)
        self._still_alive()
        node = numa.move_pages(self.proc.pid, st.vpns[cand] << PAGE_SHIFT)
        placed = (node == cfg.fast) | (node == cfg.slow)
        if cfg.fast_ratio is not None:
            # The share of what the target has on the two nodes now (pages
            # elsewhere or not movable count for neither).
            self.capacity_pages = int(cfg.fast_ratio * int(weight[placed].sum()))
        else:
            self.capacity_pages = int(cfg.fast_capacity_bytes // PAGE_SIZE)
        if r < cfg.first_plan_round:
            may = np.zeros(cand.size, bool)
        else:
            may = policy.rested(st, r, cfg.cooldown)[cand]
        sub = np.nonzero(placed)[0]
        order = sub[policy.heat_order(st.idle_streak[cand[sub]], st.hot_streak[cand[sub]], st.accesses[cand[sub]],
                                   node[sub] == cfg.fast)]
        plan = policy.capacity_plan(order, node, may, cfg.fast, cfg.slow, self.capacity_pages, self.cap_pages,
                                 weight)
        return cand, weight, node, plan

    def summary(self, stop_reason: str) -> TierSummary:
        after = None
        try:
            if not self.gone:
                check_same(self.proc)
                after = placement(self.proc, self.cfg.ranges)
        except NoSuchProcess:
            pass
        mem_after = {n: numa.node_memory(n).used_bytes for n in (self.cfg.fast, self.cfg.slow)}
        return TierSummary(self.proc.pid, self.proc.comm, self.cfg.fast, self.cfg.slow, self.cfg.dry_run,
                           self.rounds.round, self.promoted, self.demoted, self.failed, self.before, after,
                           self.mem_before, mem_after, stop_reason, self.capacity_pages)

    def _still_alive(self) -> None:
        """TargetExited if the process has exited (its pidfd reads ready):
        then its PID may already be another process's, not ours to move."""
        if select.select([self.pidfd], [], [], 0)[0]:
            raise TargetExited(self.proc.pid)

    def close(self) -> None:
        if getattr(self, "rounds", None) is not None:
            self.rounds.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self) -> "Tierer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plan_ranges(m, pv, dv, weight, plan) -> list[tuple[str, int, int, str]]:
    out = []
    for direction, vpns, w in (("promote", pv, weight[plan.promote]), ("demote", dv, weight[plan.demote])):
        if vpns.size == 0:
            continue
        # A THP head stands for its 512 pages: expand so runs coalesce.
        full = np.concatenate([vpns[w == 1]] + [v + np.arange(HPAGE_PAGES) for v in vpns[w > 1].tolist()])
        first, n = policy.coalesce(np.sort(full))
        for f, c, label in zip(first.tolist(), n.tolist(), range_labels(m, first)):
            out.append((direction, f << PAGE_SHIFT, c << PAGE_SHIFT, label))
    return out


# -- the round loop the commands share ----------------------------------------

def run_rounds(engine, period_s: float, count: int | None, emit, done=None) -> str:
    """start(), then one round every period_s (rounds.paced) until count
    rounds, ``done(round)`` says so, a stop request (Ctrl-C/SIGTERM: the
    round in progress finishes first) or the target's exit.  Returns why
    it stopped."""
    try:
        engine.start()
        n = 0
        for res in rounds.paced(engine.round, period_s, count):
            n += 1
            emit(res)
            if done is not None and done(res):
                return "done"
        return "interrupted" if rounds.stopped() else f"{n} rounds done"
    except NoSuchProcess as e:
        return f"stopped: {e}"
    except KeyboardInterrupt:
        return "interrupted"
