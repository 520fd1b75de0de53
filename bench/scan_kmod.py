"""The kernel module's rows of the scan benchmark (issue 14), in the guest.

bench.scan calls these on the same workload processes, in the same phases,
as idlemap's page_idle path and the baselines, when it was given the module
(``--kmod KO``, built on the host against the test kernel's tree):

  * "kmod" -- a first window through the kmod backend's bitmap
    (KmodBitmap.mark_idle, the target touches, .read), the whole process;
  * "kmod-window" -- its steady window, what `wss --backend kmod` pays every
    interval after the first: the target touches, then .read(remark=True),
    which reads and re-marks in one walk of the page tables (then one TLB
    flush);
  * "kmod-walk" -- the module's walk alone: one read-and-re-mark ioctl
    over the target mapping into preallocated bitmaps, no /proc/PID/maps,
    no per-page arrays: the kernel's part, the floor under "kmod-window".

Every rep is checked bit for bit against the pages the workload touched.
The functions take bench.scan itself as ``s`` (its Target, truth and
summaries): run as ``python -m bench.scan`` it is ``__main__``, and
importing it again here would load a second copy.
"""
from __future__ import annotations

import time

import numpy as np

from idlemap.kernel import kmod
from idlemap.kmodbitmap import KmodBitmap

KMOD_WINDOW_NOTE = ("kmod backend's steady window: KmodBitmap.read(remark=True), one walk that reads "
                    "and re-marks (then one TLB flush), the whole process")
KMOD_WALK_NOTE = "the module's read-and-re-mark ioctl alone, over the target mapping only"


def load(ko: str) -> dict:
    """Load the module for this bench (replacing a loaded one); what was loaded."""
    if kmod.loaded():
        kmod.unload()
    kmod.load(ko)
    return {"ko": ko, "api": kmod.API_VERSION}


def unload() -> None:
    if kmod.loaded():
        kmod.unload()


def _verdict(s, t, m) -> dict:
    """What one KmodBitmap read says of the target, bit for bit (the same
    check as idlemap's)."""
    present, idle, huge = s.target_view(m, t.lo, t.hi)
    return {**s.page_verdict(t, present, idle, huge), "process_pages": m.npages,
            "process_present": int(np.count_nonzero(m.present)),
            "target_huge_pages": int(np.count_nonzero(huge)), "spans": len(m.spans)}


def first_window(s, kb: KmodBitmap, t) -> dict:
    u0, s0 = s.rusage()
    c0 = time.perf_counter()
    marked = kb.mark_idle()
    c1 = time.perf_counter()
    u1, s1 = s.rusage()
    t.touch_window()
    u2, s2 = s.rusage()
    c2 = time.perf_counter()
    m = kb.read()
    c3 = time.perf_counter()
    u3, s3 = s.rusage()
    return {"mark_s": c1 - c0, "read_s": c3 - c2, "cycle_s": (c1 - c0) + (c3 - c2),
            "user_s": (u1 - u0) + (u3 - u2), "sys_s": (s1 - s0) + (s3 - s2),
            "frames_marked": marked, **_verdict(s, t, m)}


def window(s, kb: KmodBitmap, t, mark_first: bool = False) -> dict:
    """One steady window: the target touches, read(remark=True) ends it.
    ``mark_first`` (untimed): another tool ran since the last window (its
    marks clear accessed bits too), so start this one from a mark."""
    if mark_first:
        kb.mark_idle()
    t.touch_window()
    u0, s0 = s.rusage()
    c0 = time.perf_counter()
    m = kb.read(remark=True)
    c1 = time.perf_counter()
    u1, s1 = s.rusage()
    return {"mark_s": None, "read_s": c1 - c0, "cycle_s": c1 - c0, "user_s": u1 - u0, "sys_s": s1 - s0,
            "frames_marked": kb.last_marked, **_verdict(s, t, m)}


class Walker:
    """The module's walk of the target mapping alone, into bitmaps allocated
    once (what a C tool reading the RFC layout would pay)."""

    def __init__(self, t):
        self.t = t
        self.dev = kmod.Device(t.pid)
        words = (t.npages + 63) // 64
        self.bufs = np.zeros((3, words), np.uint64)       # idle, present, huge

    def close(self) -> None:
        self.dev.close()

    def window(self, s, mark_first: bool = False) -> dict:
        t = self.t
        if mark_first:
            self.dev.walk(t.lo, t.hi, clear=True)
        t.touch_window()
        u0, s0 = s.rusage()
        c0 = time.perf_counter()
        p, i = self.dev.walk(t.lo, t.hi, idle=self.bufs[0], present=self.bufs[1], huge=self.bufs[2],
                             clear=True)
        c1 = time.perf_counter()
        u1, s1 = s.rusage()
        bits = [np.unpackbits(b.view(np.uint8), count=t.npages, bitorder="little").view(np.bool_)
                for b in self.bufs]
        idle, present, huge = bits
        return {"mark_s": None, "read_s": c1 - c0, "cycle_s": c1 - c0, "user_s": u1 - u0, "sys_s": s1 - s0,
                "frames_marked": p - i, **s.page_verdict(t, present, idle, huge),
                "target_huge_pages": int(np.count_nonzero(huge))}


def phase_a(s, t, reps: int) -> list[dict]:
    """Phase A rows, after idlemap's (so nothing else marks in between):
    first windows, then steady windows in a row, then the walk alone."""
    kb = KmodBitmap(t.pid)
    try:
        first_window(s, kb, t)                      # first use: parses the maps, allocates
        firsts = [first_window(s, kb, t) for _ in range(reps)]
        kb.mark_idle()
        window(s, kb, t)
        wins = [window(s, kb, t) for _ in range(reps)]
    finally:
        kb.close()
    w = Walker(t)
    try:
        w.window(s, mark_first=True)
        walks = [w.window(s) for _ in range(reps)]
    finally:
        w.close()
    return [s.summarize("kmod", "python", firsts, "kmod backend's first window: mark_idle, read"),
            s.summarize("kmod-window", "python", wins, KMOD_WINDOW_NOTE),
            s.summarize("kmod-walk", "python", walks, KMOD_WALK_NOTE)]


def _abba(reps: int) -> list[int]:
    """0/1 in ABBA order, ``reps`` of each: neither side always goes first."""
    return [(i % 2) if (i // 2) % 2 == 0 else 1 - i % 2 for i in range(2 * reps)]


def sparse_pair(s, dense, sparse, reps: int) -> dict:
    """The sparse goal's comparison measured as a pair: kmod steady windows
    of the dense and the sparse target (same used size) alternating rep by
    rep, so both sample the same minutes.  Under TCG a guest's speed drifts
    by up to 2x within a run (docs/kmod.md), and the two cases' own rows
    are measured minutes apart: their ratio carried that drift."""
    kbs = [KmodBitmap(t.pid) for t in (dense, sparse)]
    try:
        for kb, t in zip(kbs, (dense, sparse)):
            kb.mark_idle()
            window(s, kb, t)                        # first use: maps, layout
        wins: tuple[list, list] = ([], [])
        for k in _abba(reps):
            wins[k].append(window(s, kbs[k], (dense, sparse)[k]))
    finally:
        for kb in kbs:
            kb.close()
    note = "; alternating with the other target (ABBA), the sparse goal's pair"
    return {"dense": s.summarize("kmod-window", "python", wins[0], KMOD_WINDOW_NOTE + note),
            "sparse": s.summarize("kmod-window", "python", wins[1], KMOD_WINDOW_NOTE + note)}


class Alternating:
    """Phase B: one kmod steady window per whole-bitmap rep (started from an
    untimed mark, as idlemap's phase-B windows are)."""

    def __init__(self, s, t):
        self.s, self.t = s, t
        self.kb = KmodBitmap(t.pid)
        self.wins: list[dict] = []
        self.kb.mark_idle()
        window(s, self.kb, t)                       # first use

    def rep(self) -> None:
        self.wins.append(window(self.s, self.kb, self.t, mark_first=True))

    def close(self) -> list[dict]:
        self.kb.close()
        if not self.wins:
            return []
        return [self.s.summarize("kmod-window", "python", self.wins,
                                 KMOD_WINDOW_NOTE + "; alternating with wss-v2")]
