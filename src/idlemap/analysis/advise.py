"""The savings advisor: cold memory and promotion rate per idle-age threshold.

Pure functions over rounds of per-page readings (no I/O), after Google's
software-defined far memory (Lagar-Cavilla et al., ASPLOS 2019): pick the
smallest cold-age threshold T whose *promotion rate* stays under a target;
the memory idle for at least T is what can go to far memory (swap, zram, a
slow tier) at that cost.

Definitions (docs/advise.md states them with an example)
--------------------------------------------------------
Rounds r = 0..N-1 are page_idle readings (accessed / present per page).

* **age**: a page's age after round r is the number of rounds since it was
  last accessed, counting round r (0 if accessed in r).  A page not
  accessed since the record began has age r+1 -- a lower bound, which is
  all a threshold test ``age >= k`` needs while k <= r+1.  Age only grows
  once the page has been seen resident: a page swapped out keeps ageing
  (touching it again is a promotion), a page never resident has no age (its
  first touch is an allocation, not a promotion).
* **cold bytes at k rounds** in round r: bytes of pages present in r with
  age >= k.  Defined for rounds r >= k-1 (before that no age can reach k).
  ``cold_mean_bytes`` averages them over those rounds; ``cold_end_bytes`` is
  the last round's (what a reclaim could take now).
* **promoted bytes at k** in round r: bytes of pages accessed in r whose age
  after round r-1 was >= k (they had been cold at k and were touched).
  Observed in rounds r >= k, over their windows' total length.
* **working set**: the mean resident bytes (present pages) over the rounds:
  the memory the job holds, of which cold bytes are the reclaimable share.
* **promotion rate at k** = promoted bytes / observed minutes / working set,
  in % per minute.
* **advised threshold**: the smallest k (T = k x interval) whose promotion
  rate is <= the target; None if no threshold the record resolves meets it.

Thresholds run over k = 1..N-1 (k = N has no promotion window); all sums
are exact integers of pages, so a synthetic history gives exact answers.
The same accumulator serves a record (:func:`advise_history`) and a live
loop over several processes (:class:`AgeTracker` per process, summed by
:class:`Accumulator`: the cgroup reclaim loop).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..kernel.maps import PAGE_SIZE

DEFAULT_TARGET_PCT_PER_MIN = 0.2


# -- the target ----------------------------------------------------------------
_TARGET = re.compile(r"^\s*([-+0-9.eE]+|nan|inf)\s*(%?)\s*(?:/\s*(s|sec|min|m|h|hour))?\s*$", re.I)
_PER_MIN = {None: 1.0, "min": 1.0, "m": 1.0, "s": 60.0, "sec": 60.0, "h": 1 / 60, "hour": 1 / 60}


def parse_target(text: str) -> float:
    """'0.2%/min' -> 0.2 (percent of the working set per minute).

    Accepted: ``X%/min`` (also ``/s``, ``/h``), ``X%`` and a bare ``X``
    (both per minute); X finite, 0 <= X% per minute <= 100.  ValueError
    (one sentence) otherwise."""
    m = _TARGET.match(text or "")
    if not m:
        raise ValueError(f"must be a promotion rate like 0.2%/min (percent of the working set per "
                         f"minute), not {text!r}")
    try:
        v = float(m.group(1))
    except ValueError:
        v = math.nan
    v *= _PER_MIN[m.group(3).lower() if m.group(3) else None]
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError(f"must be a promotion rate from 0 to 100%/min, not {text!r}")
    return v


# -- per-page ages ------------------------------------------------------------
class AgeTracker:
    """Ages of one set of pages (flat arrays), advanced one round at a time.

    :meth:`step` returns this round's histograms in pages: ``resident[a]``
    pages present with age a, ``promoted[a]`` pages accessed whose age
    before the round was a (ages >= ``kmax`` in the last bucket)."""

    def __init__(self, npages: int, kmax: int):
        self.kmax = int(kmax)
        self.age = np.zeros(npages, np.int32)
        self.seen = np.zeros(npages, bool)

    def reindex(self, keep_src: np.ndarray, keep_dst: np.ndarray, npages: int) -> None:
        """A new layout of ``npages``: page keep_dst[i] is old page keep_src[i];
        the others start unseen."""
        age = np.zeros(npages, np.int32)
        seen = np.zeros(npages, bool)
        age[keep_dst] = self.age[keep_src]
        seen[keep_dst] = self.seen[keep_src]
        self.age, self.seen = age, seen

    def step(self, accessed: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        accessed = accessed & present
        prev = np.minimum(self.age, self.kmax)
        promoted = np.bincount(prev[accessed], minlength=self.kmax + 1)
        self.seen |= present
        self.age = np.where(accessed, 0, np.where(self.seen, self.age + 1, 0)).astype(np.int32)
        resident = np.bincount(np.minimum(self.age[present], self.kmax), minlength=self.kmax + 1)
        return resident, promoted


def _suffix(h: np.ndarray) -> np.ndarray:
    """s[k] = sum of h[a] for a >= k."""
    return np.cumsum(h[::-1])[::-1]


# -- accumulating rounds -------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    rounds: int                  # k
    seconds: float               # T = k x interval
    cold_mean_bytes: int
    cold_end_bytes: int
    promoted_bytes: int
    observed_s: float            # length of the windows promotions were counted over
    rate_pct_per_min: float      # promotion rate, % of the working set per minute

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "seconds": round(self.seconds, 6),
                "cold_mean_bytes": self.cold_mean_bytes, "cold_end_bytes": self.cold_end_bytes,
                "promoted_bytes": self.promoted_bytes, "observed_s": round(self.observed_s, 6),
                "rate_pct_per_min": round(self.rate_pct_per_min, 6)}


@dataclass(frozen=True)
class Advice:
    rounds: int
    interval_s: float
    working_set_bytes: int       # mean resident bytes
    target_pct_per_min: float
    thresholds: list[Threshold]
    advised: Threshold | None

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "interval_s": round(self.interval_s, 6),
                "working_set_bytes": self.working_set_bytes, "target_pct_per_min": self.target_pct_per_min,
                "advised": None if self.advised is None else self.advised.as_dict(),
                "thresholds": [t.as_dict() for t in self.thresholds]}


class Accumulator:
    """Sums per-round histograms (of one process, or several added together)
    into the per-threshold figures; round r counts for threshold k as the
    module docstring says."""

    def __init__(self, kmax: int, page_size: int = PAGE_SIZE):
        self.kmax = int(kmax)
        self.page_size = page_size
        k = self.kmax + 1
        self.r = 0
        self.cold_sum = np.zeros(k, np.int64)      # pages, summed over rounds r >= k-1
        self.cold_rounds = np.zeros(k, np.int64)
        self.cold_last = np.zeros(k, np.int64)
        self.promoted = np.zeros(k, np.int64)      # pages, rounds r >= k
        self.observed_s = np.zeros(k, np.float64)
        self.resident_sum = 0
        self.window_sum = 0.0

    def add(self, resident: np.ndarray, promoted: np.ndarray, window_s: float) -> None:
        ks = np.arange(self.kmax + 1)
        cold = _suffix(np.asarray(resident, np.int64))
        prom = _suffix(np.asarray(promoted, np.int64))
        ok_c = ks <= self.r + 1
        ok_p = ks <= self.r
        self.cold_sum[ok_c] += cold[ok_c]
        self.cold_rounds[ok_c] += 1
        self.cold_last = np.where(ok_c, cold, 0)
        self.promoted[ok_p] += prom[ok_p]
        self.observed_s[ok_p] += window_s
        self.resident_sum += int(cold[0])
        self.window_sum += window_s
        self.r += 1

    @property
    def working_set_bytes(self) -> int:
        return int(round(self.resident_sum / self.r * self.page_size)) if self.r else 0

    def cold_now_bytes(self, k: int) -> int:
        """Bytes present with age >= k in the last round (0 if k is not yet resolvable)."""
        return int(self.cold_last[min(k, self.kmax)]) * self.page_size

    def advice(self, target_pct_per_min: float, interval_s: float | None = None) -> Advice:
        ps = self.page_size
        iv = interval_s if interval_s else (self.window_sum / self.r if self.r else 0.0)
        ws = self.working_set_bytes
        out: list[Threshold] = []
        for k in range(1, min(self.kmax, self.r - 1) + 1):
            obs = float(self.observed_s[k])
            pb = int(self.promoted[k]) * ps
            rate = (pb / ws / (obs / 60.0) * 100.0) if ws > 0 and obs > 0 else 0.0
            cold_mean = int(round(self.cold_sum[k] * ps / self.cold_rounds[k])) if self.cold_rounds[k] else 0
            out.append(Threshold(k, k * iv, cold_mean, int(self.cold_last[k]) * ps, pb, obs, rate))
        advised = next((t for t in out if t.rate_pct_per_min <= target_pct_per_min), None)
        return Advice(self.r, iv, ws, target_pct_per_min, out, advised)

    def advised_rounds(self, target_pct_per_min: float) -> int | None:
        a = self.advice(target_pct_per_min)
        return None if a.advised is None else a.advised.rounds


def advise_history(h, target_pct_per_min: float = DEFAULT_TARGET_PCT_PER_MIN,
                   interval_s: float | None = None) -> Advice:
    """The advice over a per-page :class:`~idlemap.analysis.hotness.History`
    (a record, or a live scan's rounds)."""
    h.require_per_page("the advise report")
    kmax = max(1, h.nrounds)
    tr = AgeTracker(h.npages, kmax)
    acc = Accumulator(kmax)
    for r in range(h.nrounds):
        res, prom = tr.step(h.accessed_row(r), h.present_row(r))
        acc.add(res, prom, h.rounds[r].window_s)
    return acc.advice(target_pct_per_min, interval_s)


# -- live, by virtual page ------------------------------------------------------
class VpnAgeTracker:
    """An :class:`AgeTracker` over a live process whose layout may change
    between rounds: pages are matched by virtual page number."""

    def __init__(self, kmax: int):
        self.kmax = kmax
        self.vpns = np.empty(0, np.int64)
        self.t = AgeTracker(0, kmax)

    def step(self, vpns: np.ndarray, accessed: np.ndarray, present: np.ndarray):
        self.align(vpns)
        return self.t.step(accessed, present)

    def align(self, vpns: np.ndarray) -> None:
        """Re-index the ages onto ``vpns`` (sorted keys): kept keys keep
        theirs, new ones start unseen."""
        vpns = np.asarray(vpns, np.int64)
        if not (vpns.size == self.vpns.size and np.array_equal(vpns, self.vpns)):
            order = np.argsort(vpns, kind="stable")
            sv = vpns[order]
            if self.vpns.size:
                pc = np.minimum(np.searchsorted(self.vpns, sv), self.vpns.size - 1)
                hit = self.vpns[pc] == sv
            else:
                pc, hit = np.zeros(sv.size, np.int64), np.zeros(sv.size, bool)
            self.t.reindex(pc[hit], order[hit], vpns.size)
            self.vpns = vpns

    def cold_vpns(self, k: int, present: np.ndarray) -> np.ndarray:
        return self.vpns[present & (self.t.age >= k)]


# -- many processes from one global pass (the exporter) ---------------------------
class FrameAdvisor:
    """Advice per process and per cgroup from system-wide windows (one
    page_idle read over the union of every process's frames), over the
    last ``rounds`` windows.

    Ages are kept per *frame* (a system-wide pass reads frames, not virtual
    pages): a frame's age advances while it stays in the union.  So a page
    reclaimed and brought back comes back in another frame and is seen as
    new, not as a promotion, and a frame freed and reused within one window
    carries its old page's age.  These figures describe resident memory;
    ``advise PID`` and ``advise --cgroup`` track virtual pages and see
    swapped pages come back."""

    def __init__(self, rounds: int, page_size: int = PAGE_SIZE):
        self.rounds = max(2, int(rounds))
        self.kmax = self.rounds
        self.page_size = page_size
        self.ages = VpnAgeTracker(self.kmax)
        self.history: dict[object, list[tuple[np.ndarray, np.ndarray, float]]] = {}

    def step(self, union: np.ndarray, idle: np.ndarray, groups: dict, window_s: float) -> None:
        """One window: ``union`` (sorted unique frames) with ``idle`` per
        frame, and ``groups`` {key: (pfns, pages)} -- each group's frames
        (in the union, unique within the group) and the 4 KiB pages each
        stands for (512 for a THP head).  Groups not given this window are
        forgotten."""
        accessed = ~np.asarray(idle, bool)
        self.ages.align(np.asarray(union, np.int64))
        prev = np.minimum(self.ages.t.age, self.kmax)
        self.ages.t.step(accessed, np.ones(accessed.size, bool))
        age = np.minimum(self.ages.t.age, self.kmax)
        kept = {}
        for key, (pfns, pages) in groups.items():
            idx = np.searchsorted(union, pfns)
            w = np.asarray(pages, np.float64)
            acc = accessed[idx]
            res = np.bincount(age[idx], weights=w, minlength=self.kmax + 1).astype(np.int64)
            prom = np.bincount(prev[idx][acc], weights=w[acc], minlength=self.kmax + 1).astype(np.int64)
            kept[key] = (self.history.get(key, []) + [(res, prom, window_s)])[-self.rounds:]
        self.history = kept

    def advice(self, key, target_pct_per_min: float) -> Advice | None:
        """The advice for ``key`` over its windows in the history (None if
        it has fewer than 2: no threshold can be resolved)."""
        h = self.history.get(key)
        if not h or len(h) < 2:
            return None
        acc = Accumulator(self.kmax, self.page_size)
        for res, prom, w in h:
            acc.add(res, prom, w)
        return acc.advice(target_pct_per_min)
