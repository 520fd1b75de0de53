"""Scan-cost benchmark: idlemap's page_idle path against the anchors' strategies.

Runs INSIDE the test VM (it needs CONFIG_IDLE_PAGE_TRACKING and root); from
the host, ``python -m bench.run`` boots the VMs, runs this and the host-side
bench.totals, and writes docs/performance.md.  Run alone in a guest:

    python -m bench.scan --out /tmp/out/scan.json            # the full suite
    python -m bench.scan --sizes 64 --no-thp --no-sparse      # a quick look

Measured in one run, on the same workload processes (idlemap.testing.workload: a
child that maps memory and touches exactly the pages it is told to):
  * one full mark + read cycle of idlemap's IdleBitmap (mark_idle, the target
    touches every other page -- or every other 2 MiB page for THP -- then
    read), for dense 4K and THP targets and a sparse one (256 MiB used inside
    a 1 TiB PROT_NONE/NORESERVE reservation), with idlemap's user and system
    CPU (getrusage RUSAGE_THREAD);
  * idlemap's steady-state window ("idlemap-window"): windows in a row, each
    ended by read(remark=True), which re-marks only what read accessed --
    what a monitor pays per interval after its first window;
  * the same cycle done by the two baselines, in C (bench/baselines.c,
    compiled here with cc): per-page (wss-v1) and whole-bitmap (wss-v2), and
    in Python, so the language's share is visible;
  * exactness of every tool against the pages the workload touched;
  * optionally: a "busy" guest (other processes hold --busy-mib), the
    slowdown of a memory-bound loop while idlemap scans it, and a profile;
  * with --kmod KO: idlemap's kernel module loaded from KO and the kmod
    backend measured in every case and phase and in the slowdown run
    (bench/scan_kmod.py).

Timings are wall-clock seconds of the work itself (process start-up of the
C baselines excluded: they time themselves).  The guest is QEMU TCG:
absolute times are 10-50x a real machine's; the ratios are the result.
Prints a table to stderr and the JSON document to stdout (and --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing

import numpy as np

from idlemap.bitmap import HPAGE_PAGES, IdleBitmap
from idlemap.kernel import lru, page_idle, syscalls
from idlemap.kernel import pagemap as pm
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE, read_maps
from idlemap.testing.workload import Workload

from . import scan_kmod
from .common import BENCH, REPO, emit_json
from .scan_workloads import ReservedWorkload

MiB = 1 << 20
SCHEMA = "idlemap.bench.scan/1"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def rusage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime, r.ru_stime


# -- the workload and its truth ---------------------------------------------
class Target:
    """A workload process with one target mapping of ``mib`` MiB, fully
    touched (so every page is present), and the page pattern the window
    touches: the first page of every other group of ``group`` pages."""

    def __init__(self, kind: str, mib: int, thp: bool, reserve_gib: int = 1024):
        self.kind, self.mib, self.thp = kind, mib, thp
        self.w = ReservedWorkload() if kind == "sparse" else Workload()
        try:
            if kind == "sparse":
                self.lo = self.w.reserve("t", reserve_gib, mib)
            else:
                self.lo = self.w.map("t", mib, "thp" if thp else "nothp")
            self.w.touch("t", 1)
        except BaseException:
            self.w.kill()
            raise
        self.npages = mib * MiB // PAGE_SIZE
        self.hi = self.lo + mib * MiB
        self.group = HPAGE_PAGES if thp else 1

    @property
    def pid(self) -> int:
        return self.w.pid

    def touch_window(self) -> int:
        return self.w.touch("t", 2 * self.group)

    def touched(self) -> np.ndarray:
        idx = np.arange(self.npages)
        return (idx % (2 * self.group)) == 0

    def close(self) -> None:
        self.w.close()


def target_view(m, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present, idle, huge) of the pages of VA [lo, hi) from an IdleMap."""
    n = (hi - lo) >> PAGE_SHIFT
    out = [np.zeros(n, bool), np.ones(n, bool), np.zeros(n, bool)]
    for s in m.spans:
        a, b = max(s.start, lo), min(s.end, hi)
        if a >= b:
            continue
        src = slice(s.offset + ((a - s.start) >> PAGE_SHIFT), s.offset + ((b - s.start) >> PAGE_SHIFT))
        dst = slice((a - lo) >> PAGE_SHIFT, (b - lo) >> PAGE_SHIFT)
        out[0][dst] = m.present[src]
        out[1][dst] = m.idle[src]
        out[2][dst] = m.huge[src]
    return out[0], out[1], out[2]


def truth_accessed(t: Target, huge: np.ndarray) -> np.ndarray:
    """Pages that must read accessed: the touched ones, widened to the whole
    2 MiB page where a THP backs them (one idle flag per THP)."""
    acc = t.touched()
    if huge.any():
        blk = ((t.lo >> PAGE_SHIFT) + np.arange(t.npages)) // HPAGE_PAGES
        blk -= blk[0]
        touched_blk = np.bincount(blk, weights=acc) > 0
        acc = np.where(huge, touched_blk[blk], acc)
    return acc


# -- one cycle of each tool ---------------------------------------------------
# Each returns one rep: {"mark_s", "read_s", "cycle_s", "user_s", "sys_s",
# "exact", ...}.  Cases interleave reps of different tools, so that the
# host's load (other VMs on the same two cores) hits every tool alike.

def page_verdict(t: Target, present: np.ndarray, idle: np.ndarray, huge: np.ndarray) -> dict:
    """A per-page reading of the target, bit for bit against the pages it
    touched (every tool that reads pages: idlemap's and the module's rows):
    exact or not, pages wrong, and of those, touched pages read idle (what
    a stale TLB entry does, docs/tlb.md) -- the rest are untouched pages
    read accessed or pages not present."""
    truth = truth_accessed(t, huge)
    touched_idle = int(np.count_nonzero(truth & present & idle))
    wrong = touched_idle + int(np.count_nonzero(~truth & present & ~idle)) + int(np.count_nonzero(~present))
    return {"exact": wrong == 0, "wrong_pages": wrong, "touched_read_idle": touched_idle}


def idlemap_verdict(bm: IdleBitmap, t: Target, m) -> dict:
    """What one idlemap read says of the target, checked against the pages
    it touched (bit for bit), and the process's size."""
    present, idle, huge = target_view(m, t.lo, t.hi)
    return {**page_verdict(t, present, idle, huge),
            "process_pages": m.npages, "process_present": int(np.count_nonzero(m.present)),
            "target_huge_pages": int(np.count_nonzero(huge)), "syscalls": bm._bitmap.syscalls}


def idlemap_cycle(bm: IdleBitmap, t: Target) -> dict:
    u0, s0 = rusage()
    c0 = time.perf_counter()
    marked = bm.mark_idle()
    c1 = time.perf_counter()
    u1, s1 = rusage()
    t.touch_window()
    u2, s2 = rusage()
    c2 = time.perf_counter()
    m = bm.read()
    c3 = time.perf_counter()
    u3, s3 = rusage()
    return {"mark_s": c1 - c0, "read_s": c3 - c2, "cycle_s": (c1 - c0) + (c3 - c2),
            "user_s": (u1 - u0) + (u3 - u2), "sys_s": (s1 - s0) + (s3 - s2),
            "frames_marked": marked, **idlemap_verdict(bm, t, m)}


def idlemap_window(bm: IdleBitmap, t: Target, mark_first: bool = False) -> dict:
    """One window of continuous monitoring, what `idlemap wss/record/top`
    pay every interval: the target touches, then ``read(remark=True)`` ends
    the window and starts the next (re-marking only the frames that read
    accessed).  ``mark_first`` (untimed) puts the frames back in the state
    the last window's re-mark left them, when another tool ran in between
    (phase B): every frame marked, no accessed bit set."""
    if mark_first:
        bm.mark_idle()
    t.touch_window()
    u0, s0 = rusage()
    c0 = time.perf_counter()
    m = bm.read(remark=True)
    c1 = time.perf_counter()
    u1, s1 = rusage()
    return {"mark_s": None, "read_s": c1 - c0, "cycle_s": c1 - c0, "user_s": u1 - u0, "sys_s": s1 - s0,
            "frames_marked": bm.last_marked, **idlemap_verdict(bm, t, m)}


WINDOW_NOTE = ("steady-state window: read(remark=True), which re-marks only the frames that read "
               "accessed; READ_s is the read and the re-mark")


def build_baselines(cc: str, outdir: str) -> str:
    exe = os.path.join(outdir, "baselines")
    src = os.path.join(BENCH, "baselines.c")
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, src], check=True)
    return exe


def c_phase(exe: str, algo: str, phase: str, t: Target) -> dict:
    out = subprocess.run([exe, algo, phase, str(t.pid), f"{t.lo:x}", f"{t.hi:x}"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def baseline_exact(t: Target, rd: dict, huge: np.ndarray) -> tuple[bool, int]:
    want = int(np.count_nonzero(truth_accessed(t, huge)))
    got = rd["target_accessed_even"] + rd["target_accessed_odd"]
    ok = rd["target_pages"] == t.npages and got == want
    if t.group == 1 and not huge.any():
        ok &= rd["target_accessed_odd"] == 0
    return ok, got - want


def c_cycle(exe: str, algo: str, t: Target, huge: np.ndarray) -> dict:
    lru.drain_all()          # the starting state idlemap's mark gives itself
    mk = c_phase(exe, algo, "mark", t)
    t.touch_window()
    rd = c_phase(exe, algo, "read", t)
    ok, err = baseline_exact(t, rd, huge)
    return {"mark_s": mk["wall_s"], "read_s": rd["wall_s"], "cycle_s": mk["wall_s"] + rd["wall_s"],
            "user_s": mk["user_s"] + rd["user_s"], "sys_s": mk["sys_s"] + rd["sys_s"],
            "syscalls": mk["syscalls"] + rd["syscalls"], "exact": ok, "error_pages": err,
            "bitmap_words": rd["bitmap_words"]}


def summarize(tool: str, lang: str, reps: list[dict], note: str = "") -> dict:
    out = {"tool": tool, "lang": lang, "note": note, "reps": len(reps)}
    for k in ("mark_s", "read_s", "cycle_s"):
        vals = [r[k] for r in reps if r[k] is not None]
        out[k] = statistics.median(vals) if vals else None
    out["cycle_s_all"] = [round(r["cycle_s"], 5) for r in reps]
    if all("user_s" in r for r in reps):
        user = sum(r["user_s"] for r in reps)
        sys_ = sum(r["sys_s"] for r in reps)
        out.update(user_s_total=user, sys_s_total=sys_,
                   user_share=user / (user + sys_) if user + sys_ else None)
    else:
        out["user_share"] = None
    out["exact"] = all(r["exact"] for r in reps)
    for k in ("wrong_pages", "error_pages", "touched_read_idle"):
        if k in reps[0]:
            out[k + "_max"] = max(abs(r[k]) for r in reps)
    for k in ("frames_marked", "process_pages", "process_present", "target_huge_pages", "bitmap_words"):
        if k in reps[-1]:
            out[k] = reps[-1][k]
    if "syscalls" in reps[-1]:
        out["syscalls_per_cycle"] = (reps[-1]["syscalls"] - (reps[-2]["syscalls"] if len(reps) > 1 and
                                     tool.startswith("idlemap") else 0))
    return out


# -- Python baselines (the same algorithms, to show the language's part) -----
def _user_ranges(pid: int) -> list[tuple[int, int]]:
    return [(m.start, m.end) for m in read_maps(pid) if m.start < 0xffff800000000000]


def py_v1(t: Target, phase: str) -> dict:
    """Per page: one pagemap pread, one bitmap pread/pwrite -- a Python loop."""
    c0 = time.perf_counter()
    pfd = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY)
    bfd = os.open(page_idle.PATH, os.O_RDWR)
    acc_target = 0
    try:
        for lo, hi in _user_ranges(t.pid):
            for va in range(lo, hi, PAGE_SIZE):
                b = os.pread(pfd, 8, (va >> PAGE_SHIFT) * 8)
                if len(b) < 8:
                    break
                e = int.from_bytes(b, "little")
                if not e >> 63 or not e & ((1 << 55) - 1):
                    continue
                pfn = e & ((1 << 55) - 1)
                if phase == "mark":
                    try:
                        os.pwrite(bfd, (1 << (pfn & 63)).to_bytes(8, "little"), (pfn >> 6) * 8)
                    except OSError:
                        pass
                else:
                    w = int.from_bytes(os.pread(bfd, 8, (pfn >> 6) * 8) or b"\0" * 8, "little")
                    if not (w >> (pfn & 63)) & 1 and t.lo <= va < t.hi:
                        acc_target += 1
    finally:
        os.close(pfd)
        os.close(bfd)
    return {"wall_s": time.perf_counter() - c0, "target_accessed": acc_target}


def py_v2(t: Target, phase: str) -> dict:
    """Whole bitmap: set/read all of it (4 KiB per call), numpy for the lookup."""
    c0 = time.perf_counter()
    bfd = os.open(page_idle.PATH, os.O_RDWR)
    acc_target = 0
    try:
        if phase == "mark":
            ones = b"\xff" * 4096
            off = 0
            while True:
                try:
                    if os.pwrite(bfd, ones, off) <= 0:
                        break
                except OSError:
                    break
                off += 4096
        else:
            chunks = []
            off = 0
            while True:
                b = os.pread(bfd, 4096, off)
                if not b:
                    break
                chunks.append(b)
                off += len(b)
            words = np.frombuffer(b"".join(chunks), dtype=np.uint64)
            with pm.Pagemap(t.pid) as pmap:
                for lo, hi in _user_ranges(t.pid):
                    if hi <= t.lo or lo >= t.hi:
                        continue
                    a, b = max(lo, t.lo), min(hi, t.hi)
                    e = pmap.read(a >> PAGE_SHIFT, (b - a) >> PAGE_SHIFT)
                    pres = e.view(np.int64) < 0
                    pfn = (e & pm.PFN_MASK)[pres]
                    inside = (pfn >> np.uint64(6)) < np.uint64(words.size)
                    w = np.zeros(pfn.size, np.uint64)
                    w[inside] = words[(pfn[inside] >> np.uint64(6)).astype(np.intp)]
                    idle = ((w >> (pfn & np.uint64(63))) & np.uint64(1)).astype(bool)
                    acc_target += int(np.count_nonzero(~idle))
    finally:
        os.close(bfd)
    return {"wall_s": time.perf_counter() - c0, "target_accessed": acc_target}


def py_cycle(fn, t: Target, huge: np.ndarray) -> dict:
    lru.drain_all()
    mk = fn(t, "mark")
    t.touch_window()
    rd = fn(t, "read")
    want = int(np.count_nonzero(truth_accessed(t, huge)))
    return {"mark_s": mk["wall_s"], "read_s": rd["wall_s"], "cycle_s": mk["wall_s"] + rd["wall_s"],
            "exact": rd["target_accessed"] == want, "error_pages": rd["target_accessed"] - want}


def target_huge(t: Target) -> np.ndarray:
    """THP mask of the target (pagemap + kpageflags), for the baselines' truth."""
    with IdleBitmap(t.pid, drain_lru=False) as bm:
        return target_view(bm.read(), t.lo, t.hi)[2]


def pagemap_read_s(t: Target) -> float:
    """The bare kernel cost of reading the target's pagemap once, to set the
    guest's (TCG) speed against the host's native rate (bench/totals.py)."""
    with pm.Pagemap(t.pid) as pmap:
        buf = np.empty(t.npages, np.uint64)
        pmap.read(t.lo >> PAGE_SHIFT, t.npages, buf)
        p0 = time.perf_counter()
        pmap.read(t.lo >> PAGE_SHIFT, t.npages, buf)
        return time.perf_counter() - p0


def phase_a(t: Target, reps: int, exe: str, v1: bool, py: bool, v1pub: bool = False,
            kmod: bool = False) -> list[dict]:
    """idlemap on a clean machine, the per-page baselines in the middle of
    its reps (they only mark the target's frames, like idlemap); then, with
    ``kmod``, the kernel module's rows (bench/scan_kmod.py)."""
    bm = IdleBitmap(t.pid)
    try:
        first = idlemap_cycle(bm, t)          # pays first-use costs (parse maps, buffers)
        ims = [idlemap_cycle(bm, t) for _ in range(reps // 2)]
        huge = target_huge(t)
        out = []
        if v1:
            out.append(summarize("wss-v1", "c", [c_cycle(exe, "v1", t, huge)]))
        if v1pub:
            out.append(summarize("wss-v1-as-published", "c", [c_cycle(exe, "v1pub", t, huge)],
                                 "lseek+read/write, all-ones words (marks 63 neighbours per page)"))
        if py:
            out.append(summarize("wss-v1", "python", [py_cycle(py_v1, t, huge)]))
        ims += [idlemap_cycle(bm, t) for _ in range(reps - reps // 2)]
        # Then windows in a row, as a monitor runs: one mark, then each
        # window's read re-marks for the next (the first is warm-up).
        bm.mark_idle()
        idlemap_window(bm, t)
        wins = [idlemap_window(bm, t) for _ in range(reps)]
    finally:
        bm.close()
    im = summarize("idlemap", "python", ims, "clean machine, per-page baselines run mid-way")
    im["first_cycle_s"] = first["cycle_s"]
    im["target_pagemap_read_s"] = pagemap_read_s(t)
    if kmod:
        out += scan_kmod.phase_a(sys.modules[__name__], t, reps)
    return [im, summarize("idlemap-window", "python", wins, WINDOW_NOTE)] + out


def run_before(t: Target, reps: int, before) -> dict:
    """The same cycle with idlemap's scanner as it was before the speed work
    (``before`` is that version's idlemap.bitmap module)."""
    bm = before.IdleBitmap(t.pid)
    try:
        idlemap_cycle(bm, t)
        reps_ = [idlemap_cycle(bm, t) for _ in range(reps)]
    finally:
        bm.close()
    return summarize("idlemap-before", "python", reps_, "the scanner before the speed work")


def phase_b(t: Target, reps: int, exe: str, py: bool, published: bool = True,
            kmod: bool = False) -> list[dict]:
    """Whole-bitmap and idlemap alternating, rep by rep.  The whole-bitmap
    mark leaves every LRU frame of the machine idle-flagged, so idlemap's
    reads here also pay rmap walks for idle-flagged neighbours of its
    frames: these idlemap figures are, if anything, pessimistic."""
    if reps <= 0:
        return []
    huge = target_huge(t)
    bm = IdleBitmap(t.pid)
    km = scan_kmod.Alternating(sys.modules[__name__], t) if kmod else None
    try:
        idlemap_cycle(bm, t)
        v2s, ims, wins, pubs = [], [], [], []
        for r in range(reps):
            v2s.append(c_cycle(exe, "v2", t, huge))
            ims.append(idlemap_cycle(bm, t))
            wins.append(idlemap_window(bm, t, mark_first=True))
            if km:
                km.rep()
            if r < 2 and published:
                pubs.append(c_cycle(exe, "v2pub", t, huge))
        out = [summarize("wss-v2", "c", v2s),
               summarize("idlemap", "python", ims, "alternating with wss-v2"),
               summarize("idlemap-window", "python", wins, WINDOW_NOTE + "; alternating with wss-v2")]
        if pubs:
            out.append(summarize("wss-v2-as-published", "c", pubs, "bitmap read 8 bytes per call"))
        if py:
            out.append(summarize("wss-v2", "python", [py_cycle(py_v2, t, huge)]))
    finally:
        bm.close()
        if km:
            out_k = km.close()
    if km:
        out += out_k
    return out


# -- slowdown of a memory-bound loop ------------------------------------------
def run_slowdown(mib: int, intervals: list[float], seconds: float, rounds: int,
                 kmod: bool = False) -> dict:
    """Passes of the workload's hot loop (one write per page over ``mib``)
    per second, alone and while idlemap re-reads and re-marks it every
    interval (what `idlemap wss PID interval` does), interleaved; with
    ``kmod`` also through the kernel module (which flushes the TLB after
    every re-mark)."""
    w = Workload()
    try:
        w.map("h", mib, "nothp")
        w.touch("h", 1)
        npages = mib * MiB // PAGE_SIZE
        modes: list[tuple[str, float] | None] = [None] + [("page_idle", iv) for iv in intervals]
        if kmod:
            modes += [("kmod", iv) for iv in intervals]
        key = {m: "None" if m is None else ("" if m[0] == "page_idle" else "kmod:") + str(m[1])
               for m in modes}
        rates: dict[str, list[float]] = {key[m]: [] for m in modes}
        scans: dict[str, list[float]] = {key[m]: [] for m in modes}
        for _ in range(rounds):
            for mode in modes:
                bm = None
                if mode is not None:
                    bm = (scan_kmod.KmodBitmap if mode[0] == "kmod" else IdleBitmap)(w.pid)
                    bm.mark_idle()
                w.hot("h", 0, npages)
                t0 = time.perf_counter()
                nscan, busy = 0, 0.0
                if bm is None:
                    time.sleep(seconds)
                else:
                    iv = mode[1]
                    nxt = t0 + iv
                    while True:
                        now = time.perf_counter()
                        if now >= t0 + seconds:
                            break
                        if now < nxt:
                            time.sleep(min(nxt, t0 + seconds) - now)
                            continue
                        s0 = time.perf_counter()
                        bm.read(remark=True)
                        busy += time.perf_counter() - s0
                        nscan += 1
                        nxt += iv
                        if nxt < time.perf_counter():        # cannot keep up: go on at once
                            nxt = time.perf_counter()
                passes = w.stop()
                el = time.perf_counter() - t0
                if bm is not None:
                    bm.close()
                rates[key[mode]].append(passes / el)
                scans[key[mode]].append(busy / el)
        base = statistics.median(rates["None"])
        out = {"target_mib": mib, "seconds_per_run": seconds, "runs": rounds,
               "passes_per_s_alone": base, "alone_runs": rates["None"], "with_scan": []}
        for mode in modes[1:]:
            r = statistics.median(rates[key[mode]])
            out["with_scan"].append({"backend": mode[0], "interval_s": mode[1], "passes_per_s": r,
                                     "runs": rates[key[mode]],
                                     "slowdown": 1 - r / base if base else None,
                                     "scanner_busy_share": statistics.median(scans[key[mode]])})
        return out
    finally:
        w.close()


# -- profile ----------------------------------------------------------------
SYSCALL_LINES = {"pread_pieces": "kernel: page_idle bitmap read (preadv)",
                 "pwrite_pieces": "kernel: page_idle bitmap write (pwritev)",
                 "Pagemap._read": "kernel: pagemap read (preadv)"}
_SRC_CACHE: dict[str, list[str]] = {}


def _label(frame: str) -> str:
    """py-spy frame "func (path:line)" -> a kernel label when that line is a
    syscall (py-spy sees Python frames only: time in preadv lands on the
    line that calls it), else the frame itself."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    if name in SYSCALL_LINES and path.startswith("idlemap/"):
        src = _SRC_CACHE.get(path)
        if src is None:
            try:
                with open(os.path.join(REPO, "src", path)) as f:
                    src = _SRC_CACHE[path] = f.read().splitlines()
            except OSError:
                src = _SRC_CACHE[path] = []
        text = src[int(line) - 1] if line.isdigit() and 0 < int(line) <= len(src) else ""
        if "preadv(" in text or "pwritev(" in text:
            return SYSCALL_LINES[name]
    if name.endswith("<listcomp>") and path == "idlemap/kernel/frames.py":
        return "kernel: page_idle/kpageflags read (pread)"
    return frame


def run_profile(t: Target, seconds: float, outdir: str) -> dict:
    """Sample steady-state windows (read(remark=True), what a monitor runs
    every interval) with py-spy (outside the process: no instrumentation
    overhead, which under TCG would swamp the Python part) and rank where
    the samples land."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    raw = os.path.join(outdir, f"profile-{t.mib}{'thp' if t.thp else ''}.txt")
    bm = IdleBitmap(t.pid)
    bm.mark_idle()
    bm.read(remark=True)
    p = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--format", "raw", "-o", raw,
                          "--rate", "250", "--nonblocking", "--idle"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3.0)              # py-spy attaches (slow under TCG)
    t0 = time.perf_counter()
    ncycles = 0
    while time.perf_counter() - t0 < seconds:
        t.touch_window()
        bm.read(remark=True)
        ncycles += 1
    wall = time.perf_counter() - t0
    p.send_signal(2)
    p.wait()
    bm.close()
    leaf: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with open(raw) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            # only the scan: drop the wait for the workload's ack, the setup
            if not any(fr.startswith(("IdleBitmap.mark_idle", "IdleBitmap.read", "mark_idle", "read (")) for fr in frames) \
                    or any("touch_window" in fr for fr in frames):
                continue
            n = int(n)
            total += n
            key = _label(frames[-1])
            leaf[key] = leaf.get(key, 0) + n
            seen = set()
            for fr in frames:
                nm = fr.split(" (")[0]
                if nm not in seen and ("idlemap/" in fr or "frames.py" in fr):
                    seen.add(nm)
                    incl[nm] = incl.get(nm, 0) + n
    top = sorted(leaf.items(), key=lambda kv: -kv[1])[:15]
    tops = sorted(incl.items(), key=lambda kv: -kv[1])[:15]
    kern = sum(v for k, v in leaf.items() if k.startswith("kernel:"))
    return {"case": f"{t.kind} {t.mib} MiB {'THP' if t.thp else '4K'}", "cycles": ncycles,
            "wall_s": wall, "samples": total, "tool": "py-spy --idle, 250 Hz",
            "kernel_share": kern / total if total else None,
            "top_self": [{"where": k, "samples": v, "share": v / total} for k, v in top],
            "top_inclusive": [{"where": k, "samples": v, "share": v / total} for k, v in tops]}


# -- driver -----------------------------------------------------------------
def guest_info() -> dict:
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            mem[k] = v.strip()
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    return {"kernel": platform.release(), "mem_total": mem.get("MemTotal"), "cpus": os.cpu_count(),
            "thp_enabled": thp, "python": platform.python_version(), "numpy": np.__version__,
            "page_size": PAGE_SIZE}


def ratio(a, b):
    return a / b if a and b else None


def fmt(x, unit="", nd=3):
    if x is None:
        return "-"
    return f"{x:.{nd}f}{unit}"


def print_table(doc: dict) -> None:
    log("")
    log(f"guest {doc['guest']['kernel']}, {doc['guest']['mem_total']}, {doc['guest']['cpus']} vCPUs")
    log(f"{'case':<28} {'tool':<12} {'MARK_s':>8} {'READ_s':>8} {'CYCLE_s':>8} {'ns/page':>8} "
        f"{'user%':>6} {'exact':>6} {'vs_it':>8}")
    for c in doc["cases"]:
        for r in c["results"]:
            im = next((x for x in c["results"] if x["tool"] == "idlemap" and x["phase"] == r["phase"]), None)
            ns = r["cycle_s"] / c["target_pages"] * 1e9
            vs = ratio(r["cycle_s"], im["cycle_s"]) if im and r is not im else None
            us = r.get("user_share")
            log(f"{c['name'][:26]:<26} {r['phase']} {r['tool'] + ('' if r['lang'] == 'c' or r['tool'].startswith('idlemap') else '.py'):<12} "
                f"{fmt(r['mark_s']):>8} {r['read_s']:>8.3f} {r['cycle_s']:>8.3f} {ns:>8.0f} "
                f"{(f'{us * 100:.0f}' if us is not None else '-'):>6} {str(r['exact']):>6} "
                f"{(f'{vs:.1f}x' if vs else ''):>8}")
    if doc.get("slowdown"):
        s = doc["slowdown"]
        log(f"slowdown of a {s['target_mib']} MiB write loop: alone {s['passes_per_s_alone']:.2f} passes/s")
        for w in s["with_scan"]:
            log(f"  {w.get('backend', 'page_idle')} every {w['interval_s']} s: {w['passes_per_s']:.2f} passes/s, "
                f"slowdown {w['slowdown'] * 100:.1f}%, scanner busy {w['scanner_busy_share'] * 100:.0f}% of the time")
    for p in doc.get("profiles", []):
        log(f"profile {p['case']} ({p['cycles']} cycles, {p['wall_s']:.1f} s, {p['samples']} samples):")
        for e in p["top_self"][:12]:
            log(f"  {e['share'] * 100:5.1f}%  {e['where']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the JSON document here")
    ap.add_argument("--label", default="", help="name of this run (e.g. the guest size)")
    ap.add_argument("--sizes", default="64,256,1024", help="dense target sizes, MiB (default 64,256,1024)")
    ap.add_argument("--thp-sizes", default=None, help="THP target sizes (default: as --sizes)")
    ap.add_argument("--no-thp", action="store_true")
    ap.add_argument("--sparse", default="1024:256", help="GiB:MiB reserved:used (default 1024:256)")
    ap.add_argument("--no-sparse", action="store_true")
    ap.add_argument("--reps", type=int, default=6, help="idlemap cycles per case in phase A (plus one first)")
    ap.add_argument("--v2-reps", type=int, default=5, help="whole-bitmap/idlemap alternations per case")
    ap.add_argument("--v1-max-mib", type=int, default=1024, help="per-page baseline up to this size")
    ap.add_argument("--py-max-mib", type=int, default=256, help="Python baselines up to this size")
    ap.add_argument("--v1pub-max-mib", type=int, default=256,
                    help="the per-page baseline as published (slower still) up to this size")
    ap.add_argument("--busy-mib", type=int, default=0,
                    help="first run the 256 MiB case again while another process holds this much")
    ap.add_argument("--slowdown", default="", help="intervals for the slowdown test, e.g. 1,0.1")
    ap.add_argument("--slowdown-s", type=float, default=10.0)
    ap.add_argument("--slowdown-runs", type=int, default=3)
    ap.add_argument("--profile", default="", help="profile these cases, e.g. 1024,1024thp")
    ap.add_argument("--profile-s", type=float, default=20.0, help="seconds of cycles to sample")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    ap.add_argument("--before", metavar="DIR", help="a directory holding idlemap_before/, the scanner "
                    "before the speed work (bench.run extracts it from git), measured alongside")
    ap.add_argument("--before-sizes", default="64,1024,1024thp", help="cases to run --before on")
    ap.add_argument("--kmod", metavar="KO", help="idlemap's kernel module built for this kernel: load it "
                    "and measure the kmod backend on the same processes (bench/scan_kmod.py)")
    args = ap.parse_args(argv)
    syscalls.hold_freed_memory()        # as the idlemap program does (cli.main)

    if not page_idle.available() or os.geteuid() != 0:
        log("scan.py needs root and CONFIG_IDLE_PAGE_TRACKING: run it in the test VM (python -m bench.run)")
        return 2
    sizes = [int(x) for x in args.sizes.split(",") if x]
    thp_sizes = [] if args.no_thp else [int(x) for x in (args.thp_sizes or args.sizes).split(",") if x]
    cases = [("dense", s, False) for s in sizes] + [("dense", s, True) for s in thp_sizes]
    if not args.no_sparse:
        gib, mib = (int(x) for x in args.sparse.split(":"))
        cases.append(("sparse", mib, False))
    doc = {"schema": SCHEMA, "label": args.label, "guest": guest_info(), "cases": [],
           "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = tempfile.mkdtemp(prefix="idlemap-bench.")
    exe = build_baselines(args.cc, tmp)
    km = bool(args.kmod)
    if km:
        doc["kmod"] = scan_kmod.load(args.kmod)
    try:
        return _run(args, doc, tmp, exe, km, gib if not args.no_sparse else 0, cases)
    finally:
        if km:
            scan_kmod.unload()


def _run(args, doc: dict, tmp: str, exe: str, km: bool, gib: int, cases: list) -> int:
    before = None
    if args.before:
        sys.path.insert(0, args.before)
        import idlemap_before.bitmap as before
        doc["before"] = getattr(before, "__origin__", args.before)

    def case_name(kind, mib, thp):
        if kind == "sparse":
            return f"sparse {mib} MiB in {gib} GiB"
        return f"dense {mib} MiB {'THP' if thp else '4K'}"

    # Phase A, every case: idlemap on a clean machine, the per-page
    # baselines mid-way.  Phase B, every case again: whole-bitmap and idlemap
    # alternating -- last, because the whole-bitmap mark leaves every LRU
    # frame of the machine idle-flagged (see phase_b).
    records = {}
    for kind, mib, thp in cases:
        name = case_name(kind, mib, thp)
        log(f"== {name}: phase A")
        t = Target(kind, mib, thp, reserve_gib=gib if kind == "sparse" else 0)
        try:
            small4k = kind == "dense" and not thp
            res = phase_a(t, args.reps, exe, v1=small4k and mib <= args.v1_max_mib,
                          py=small4k and mib <= args.py_max_mib,
                          v1pub=small4k and mib <= args.v1pub_max_mib, kmod=km)
            if before is not None and kind == "dense" and \
                    f"{mib}{'thp' if thp else ''}" in args.before_sizes.split(","):
                res.append(run_before(t, max(2, args.reps // 2), before))
            for r in res:
                r["phase"] = "A"
            records[name] = {"name": name, "kind": kind, "target_mib": mib, "thp": thp,
                             "target_pages": t.npages, "results": res}
            for p in args.profile.split(","):
                if p and p == f"{mib}{'thp' if thp else ''}" and kind == "dense":
                    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "py-spy")):
                        log("(no py-spy next to this Python: no profile; pip install py-spy)")
                        continue
                    doc.setdefault("profiles", []).append(run_profile(t, args.profile_s, tmp))
        finally:
            t.close()
    for kind, mib, thp in cases:
        name = case_name(kind, mib, thp)
        log(f"== {name}: phase B (alternating with whole bitmap)")
        t = Target(kind, mib, thp, reserve_gib=gib if kind == "sparse" else 0)
        try:
            res = phase_b(t, args.v2_reps, exe, py=kind == "dense" and mib <= args.py_max_mib, kmod=km)
            for r in res:
                r["phase"] = "B"
            records[name]["results"] += res
        finally:
            t.close()
    doc["cases"] = list(records.values())

    sparse_mib = next((mib for kind, mib, _ in cases if kind == "sparse"), None)
    if km and sparse_mib:
        log(f"== kmod: dense and sparse {sparse_mib} MiB, alternating (the sparse goal's pair)")
        with closing(Target("dense", sparse_mib, False)) as d, \
                closing(Target("sparse", sparse_mib, False, reserve_gib=gib)) as sp:
            doc["kmod_sparse_pair"] = {"target_mib": sparse_mib, "reserve_gib": gib,
                                       **scan_kmod.sparse_pair(sys.modules[__name__], d, sp, args.reps)}

    if args.busy_mib:
        log(f"== busy guest: another process holds {args.busy_mib} MiB")
        other = Workload()
        try:
            other.map("busy", args.busy_mib, "nothp")
            other.touch("busy", 1)
            t = Target("dense", 256, False)
            try:
                res = phase_a(t, args.reps, exe, v1=False, py=False, kmod=km)
                for r in res:
                    r["phase"] = "A"
                res_b = phase_b(t, args.v2_reps, exe, py=False, kmod=km)
                for r in res_b:
                    r["phase"] = "B"
                doc["cases"].append({"name": f"busy: 256 MiB 4K + {args.busy_mib} MiB other",
                                     "kind": "busy", "target_mib": 256, "thp": False,
                                     "other_mib": args.busy_mib, "target_pages": t.npages,
                                     "results": res + res_b})
            finally:
                t.close()
        finally:
            other.close()

    if args.slowdown:
        log("== slowdown")
        doc["slowdown"] = run_slowdown(256, [float(x) for x in args.slowdown.split(",")],
                                       args.slowdown_s, args.slowdown_runs, kmod=km)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print_table(doc)
    emit_json(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
