"""Goal-driven reclaim of a cgroup (cgroup v2 ``memory.reclaim``), held to
a PSI target and sized by the savings advisor (analysis/advise.py).

Each round (every ``period_s``):

1. every process of the cgroup (and its descendants) is scanned with
   :class:`idlemap.scan.Scanner` ``acting=True`` -- TLB-flushed readings
   only, like every action (docs/tlb.md) -- and each page's idle age is
   advanced (:class:`~idlemap.analysis.advise.VpnAgeTracker`); the
   :class:`~idlemap.analysis.advise.Accumulator` sums the cgroup's cold
   bytes and promotions per threshold;
2. the threshold is the advisor's (smallest k meeting the promotion-rate
   target over the rounds so far), never below ``min_cold_for``;
3. the **request** is the cold bytes still resident at that threshold,
   at most ``step`` bytes;
4. it is *not* made, and the step halves (**back-off**), when PSI
   ``some avg10`` of the cgroup is at or above ``psi_target``, when the
   **promotion rate of what the loop reclaimed** (pages it saw go that are
   present again, over the last 5 rounds, per minute, as a share of the
   working set) is above ``promotion_target`` (and at least 1 MiB came
   back) -- then the threshold's floor
   doubles too: those pages were not cold enough -- or when the cgroup's
   refaults (``memory.stat`` workingset_refault_anon + _file) in the round
   exceed ``max_refault_pct`` of what was reclaimed over the last 5 rounds;
   the step starts small (``first_step``) and doubles, up to ``max_step``,
   each time a round finds the previous write granted in full and calm
   (no back-off); 3 refault back-offs in a row stop the loop;
5. otherwise the request is written (not in a dry run): to
   process_madvise(MADV_PAGEOUT) of that many bytes of exactly the pages
   read cold (``via="pageout"``, the default), or to ``memory.reclaim``
   (``via="reclaim"``); ``memory.current`` before and after says what went.

Through memory.reclaim the kernel chooses the pages (its LRU order):
idlemap decides how much, and when to stop; through pageout idlemap
chooses them too.  Pages our readings call cold were not referenced since
their last mark, which the kernel's reclaim sees too (page_idle keeps a
cleared accessed bit in PG_young), so they should be what the LRU takes
first -- but under MGLRU a hot page not touched again between the reading
and the write was seen evicted first (docs/advise.md), which is what the
refault and promotion goals are for.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .analysis import advise as A
from .cgroup_scan import CgroupScan
from .errors import NoSuchProcess, UsageError
from .kernel import cgroup as cg
from .kernel.maps import PAGE_SIZE

MiB = 1 << 20
REFAULT_WINDOW = 5
# Refaults are judged against at least this much recent reclaim, so a few
# pages of an interpreter faulting back do not stop a loop that has only
# just begun (5% of 16 MiB: 0.8 MiB).
REFAULT_FLOOR = 16 * MiB
# The promotion goal is judged only once this much of what the loop
# reclaimed has come back within the window (like the per-process refault
# guard's 256 pages): at 0.2%/min of 100 MiB over 5 s windows, 5 pages would
# already be over the target, and a few interpreter pages faulting back are
# not a threshold that was too short.
PROMOTION_FLOOR = 1 * MiB


@dataclass
class CgroupReclaimConfig:
    path: str
    target_pct_per_min: float = A.DEFAULT_TARGET_PCT_PER_MIN
    psi_target_pct: float = 0.1
    min_cold_for: int = 2
    max_step_bytes: int = 64 * MiB
    # The first request is this small (at most max_step_bytes) and the step
    # doubles only once a round shows the last write calm: one 64 MiB first
    # request was seen to take pages of a running hot loop and hold PSI
    # above target for the rest of a 16-round run (docs/advise.md).
    first_step_bytes: int = 8 * MiB
    max_refault_pct: float = 5.0
    period_s: float = 1.0
    dry_run: bool = False
    tlb_flush: str = "auto"
    unsafe_no_tlb_flush: bool = False
    kmax: int = 256                     # ages tracked up to this many rounds
    # %/min of the working set: the most of what the loop reclaimed that may
    # come back (None: not a goal; the advisor's target still sets T)
    promotion_target_pct_per_min: float | None = None
    # How a request is written: "pageout" -- process_madvise(MADV_PAGEOUT) of
    # exactly the pages read cold (and charged to the cgroup), request bytes
    # of them; "reclaim" -- memory.reclaim, the kernel's LRU picks the pages.
    # pageout is the default because only it acts on idlemap's flushed
    # reading: the LRU ages pages by accessed bits it clears without a TLB
    # flush, and in the test VM it took a never-pausing loop's hot pages on
    # the first 8 MiB request (docs/advise.md).
    via: str = "pageout"


@dataclass
class CgroupRound:
    index: int
    procs: int
    memory_bytes: int                   # memory.current at the read
    threshold_rounds: int | None        # k used (None: no advice yet)
    cold_bytes: int                     # resident and idle >= k
    psi_some_avg10: float
    refault_bytes: int                  # workingset refaults in the round
    request_bytes: int                  # asked of memory.reclaim (planned, in a dry run)
    reclaimed_bytes: int                # memory.current drop over the write
    step_bytes: int
    note: str = ""
    back_bytes: int = 0                 # pages the loop reclaimed, present again this round
    promotion_rate_pct_per_min: float = 0.0   # of those, over the last REFAULT_WINDOW rounds

    def as_dict(self) -> dict:
        return {"schema": ROUND_SCHEMA, "round": self.index, "procs": self.procs,
                "memory_bytes": self.memory_bytes, "threshold_rounds": self.threshold_rounds,
                "cold_bytes": self.cold_bytes, "psi_some_avg10": self.psi_some_avg10,
                "refault_bytes": self.refault_bytes, "request_bytes": self.request_bytes,
                "reclaimed_bytes": self.reclaimed_bytes, "step_bytes": self.step_bytes, "note": self.note,
                "back_bytes": self.back_bytes,
                "promotion_rate_pct_per_min": round(self.promotion_rate_pct_per_min, 6)}


ROUND_SCHEMA = "idlemap.reclaim.cgroup.round/1"
SUMMARY_SCHEMA = "idlemap.reclaim.cgroup.summary/1"


@dataclass
class CgroupSummary:
    path: str
    rounds: int
    memory_before_bytes: int
    memory_after_bytes: int
    requested_bytes: int
    reclaimed_bytes: int
    refault_bytes: int
    psi_max_avg10: float
    backoffs: int
    advice: dict | None
    stop_reason: str
    dry_run: bool
    tlb: dict = field(default_factory=dict)
    backend: str = ""                   # the per-page backend the members were read with
    via: str = "pageout"                # how requests were written (CgroupReclaimConfig.via)
    back_bytes: int = 0                 # reclaimed pages that came back, in all
    promotion_rate_max: float = 0.0     # the highest windowed promotion rate of a round
    threshold_floor: int = 0            # the floor the promotion goal raised T to

    def as_dict(self) -> dict:
        return {"schema": SUMMARY_SCHEMA, "cgroup": self.path, "rounds": self.rounds,
                "memory_before_bytes": self.memory_before_bytes, "memory_after_bytes": self.memory_after_bytes,
                "requested_bytes": self.requested_bytes, "reclaimed_bytes": self.reclaimed_bytes,
                "refault_bytes": self.refault_bytes, "psi_max_avg10": self.psi_max_avg10,
                "backoffs": self.backoffs, "advice": self.advice, "stop_reason": self.stop_reason,
                "dry_run": self.dry_run, "backend": self.backend, "via": self.via, "back_bytes": self.back_bytes,
                "promotion_rate_max_pct_per_min": round(self.promotion_rate_max, 6),
                "threshold_floor_rounds": self.threshold_floor, **self.tlb}


def back_off(psi: float, psi_target: float, refault_bytes: int, recent_reclaimed: int,
             max_refault_pct: float, promotion_rate: float = 0.0,
             promotion_target: float | None = None, back_bytes: int = 0) -> str:
    """Why this round must not reclaim ("" if it may): pure, unit-tested."""
    if psi >= psi_target:
        return f"PSI some avg10 {psi:g}% >= {psi_target:g}%"
    if promotion_target is not None and promotion_rate > promotion_target and back_bytes >= PROMOTION_FLOOR:
        return (f"promotion rate of reclaimed pages {promotion_rate:.3g}%/min > "
                f"{promotion_target:g}%/min")
    if refault_bytes > 0 and refault_bytes > max_refault_pct / 100.0 * max(recent_reclaimed, REFAULT_FLOOR):
        return f"refaults {refault_bytes / MiB:.1f} MiB > {max_refault_pct:g}% of recent reclaim"
    return ""


def promotion_rate(back_bytes: int, window_s: float, working_set_bytes: int) -> float:
    """% of the working set per minute that came back over ``window_s``."""
    if back_bytes <= 0 or window_s <= 0 or working_set_bytes <= 0:
        return 0.0
    return back_bytes / working_set_bytes / (window_s / 60.0) * 100.0


class CgroupReclaimer:
    """One round per :meth:`round` (tests drive it between workload steps)."""

    def __init__(self, cfg: CgroupReclaimConfig):
        self.cfg = cfg
        if cfg.via not in ("reclaim", "pageout"):
            raise UsageError(f"--via must be reclaim or pageout, not {cfg.via!r}")
        self.path = cg.resolve(cfg.path)
        cg.require_memory_files(self.path)
        self.scan = CgroupScan(self.path, cfg.kmax, cfg.tlb_flush, acting=True,
                               unsafe_no_tlb_flush=cfg.unsafe_no_tlb_flush)
        self.acc = self.scan.acc
        self.step = min(cfg.first_step_bytes, cfg.max_step_bytes)
        self.last_full = False          # the last write got all it asked (grow if this round is calm)
        self.index = 0
        self.backoffs = 0
        self.backoffs_in_row = 0
        self.stopped = ""
        self.recent: list[int] = []
        self.requested = self.reclaimed = self.refaulted = 0
        self.psi_max = 0.0
        self.memory_before = cg.memory_current(self.path)
        self.floor = cfg.min_cold_for
        self.back_window: list[tuple[int, float]] = []     # (bytes back, window s) per recent round
        self.back_total = 0
        self.promo_max = 0.0
        self.last_refaults = cg.refaults(cg.read_stat(self.path))

    @property
    def members(self) -> dict:
        return self.scan.members

    @property
    def tlb(self) -> dict:
        return self.scan.tlb

    def start(self) -> None:
        self.scan.start()

    def round(self) -> CgroupRound:
        g = self.scan.round()
        back = g.back_pages
        window = g.window_s
        self.index += 1
        back_bytes = back * PAGE_SIZE
        self.back_total += back_bytes
        self.back_window = (self.back_window + [(back_bytes, window)])[-REFAULT_WINDOW:]
        promo = promotion_rate(sum(b for b, _ in self.back_window), sum(w for _, w in self.back_window),
                               self.acc.working_set_bytes)
        self.promo_max = max(self.promo_max, promo)

        adv_k = self.acc.advised_rounds(self.cfg.target_pct_per_min)
        k = None if adv_k is None else max(adv_k, self.floor)
        cold = 0
        cold_sets: list = []                # (member, its cold charged pages)
        if k is not None and self.acc.r > k:
            inodes = cg.subtree_inodes(self.path)
            self.scan.each(lambda m: cold_sets.append((m, m.cold_charged(k, inodes))))
            cold = sum(v.size for _, v in cold_sets) * PAGE_SIZE
        psi = cg.read_pressure(self.path).get("some", {}).get("avg10", 0.0)
        self.psi_max = max(self.psi_max, psi)
        rf_now = cg.refaults(cg.read_stat(self.path))
        rf = max(0, rf_now - self.last_refaults) * PAGE_SIZE
        self.last_refaults = rf_now
        self.refaulted += rf
        mem = cg.memory_current(self.path)
        why = back_off(psi, self.cfg.psi_target_pct, rf, sum(self.recent), self.cfg.max_refault_pct,
                       promo, self.cfg.promotion_target_pct_per_min, sum(b for b, _ in self.back_window))
        request = reclaimed = 0
        note = ""
        if why:
            self.last_full = False
            self.backoffs += 1
            self.backoffs_in_row += 1
            self.step = max(MiB, self.step // 2)
            note = f"back-off: {why}"
            if why.startswith("promotion"):
                # What came back was reclaimed at too short a threshold:
                # double its floor, and judge the new one on its own pages.
                self.floor = min(self.cfg.kmax, 2 * (k or self.floor))
                self.back_window = []
                note += f"; threshold now at least {self.floor} rounds"
            # Pressure only holds the loop (it decays within seconds, as
            # Senpai waits it out); refaults round after round mean the
            # threshold is wrong for this workload: stop.
            if self.backoffs_in_row >= 3 and why.startswith("refaults"):
                self.stopped = f"3 back-offs in a row ({why})"
        else:
            self.backoffs_in_row = 0
            if self.last_full:
                # The last write was granted in full and this round is calm
                # (no pressure, refaults or promotions since): grow.
                self.step = min(self.cfg.max_step_bytes, self.step * 2)
                self.last_full = False
            if k is None or self.acc.r <= k:
                note = "warming up: no page can be idle long enough yet"
            request = min(cold, self.step) // 1024 * 1024
            if request > 0 and not self.cfg.dry_run:
                full = (cg.reclaim(self.path, request) if self.cfg.via == "reclaim"
                        else self._pageout(cold_sets, request))
                after = cg.memory_current(self.path)
                reclaimed = max(0, mem - after)
                mem = after
                self.scan.each(lambda m: m.note_reclaimed())
                if not full:
                    # What is left at this threshold is not on the cgroup's
                    # LRU lists as we thought: go slower rather than let
                    # the kernel dig into the working set.
                    note = "the kernel reclaimed less than asked"
                    self.step = max(MiB, self.step // 2)
                self.last_full = full
            elif request > 0:
                self.last_full = True       # a dry run plans as if each write were granted
        self.requested += request
        self.reclaimed += reclaimed
        self.recent = (self.recent + [reclaimed])[-REFAULT_WINDOW:]
        if not self.members and not self.stopped:
            note = (note + "; " if note else "") + "no process in the cgroup"
        self.scan.sync()
        return CgroupRound(self.index - 1, len(self.members), mem, k, cold, psi, rf, request, reclaimed,
                           self.step, note, back_bytes, promo)

    def _pageout(self, cold_sets: list, request: int) -> bool:
        """MADV_PAGEOUT of ``request`` bytes of the cold pages, member by
        member; True if the kernel took all of them."""
        left = request // PAGE_SIZE
        done: list[int] = []
        for m, v in cold_sets:
            if left <= 0:
                break
            take = v[:left]
            left -= take.size
            try:
                done.append(m.pageout(take))
            except NoSuchProcess:
                pass                        # gone: the next round drops it
        return sum(done) >= request

    def summary(self, reason: str) -> CgroupSummary:
        try:
            after = cg.memory_current(self.path)
        except OSError:
            after = -1
        adv = self.acc.advice(self.cfg.target_pct_per_min)
        return CgroupSummary(self.path, self.index, self.memory_before, after, self.requested, self.reclaimed,
                             self.refaulted, self.psi_max, self.backoffs,
                             None if adv.advised is None else adv.advised.as_dict(),
                             self.stopped or reason, self.cfg.dry_run, self.tlb, self.scan.backend_name, self.cfg.via,
                             self.back_total,
                             self.promo_max, self.floor)

    def close(self) -> None:
        self.scan.close()

    def __enter__(self) -> "CgroupReclaimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
