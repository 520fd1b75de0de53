"""How wrong is each backend, and what does it cost?  Ground truth, per workload.

    python -m bench.accuracy                # boots the test VM, runs everything,
                                            # writes docs/accuracy.md
    python -m bench.accuracy --here ...     # run on this kernel (needs page_idle,
                                            # DAMON vaddr, root)

Every workload is driven by a child process whose access pattern is exact
and logged: tiers of pages, each touched every ``period`` rounds by a loop
inside the child (numpy, C speed), paced like a program that works, then
waits.  A measurement window is

    pause the loop -> backend.mark() -> resume (log from here) -> window_s
    -> pause -> backend.sample() -> the child says which tiers it touched

so the truth (every page touched after the mark) is known exactly, with no
race against a clock; the pattern keeps running before the window so DAMON
sees the steady state it is meant for (it also gets warm_s seconds to adapt
its regions first).  The TLB workload is the exception: a tight loop that
never pauses, because the TLB effect needs translations cached across the
mark (truth: its hot pages; see bench/tlb.py and docs/tlb.md).

Per workload x backend: WSS error (% of truth, in the workload's data
mappings only: the interpreter's own pages have no ground truth), precision
and recall of the hot pages where the backend has per-page or per-region
output, scan CPU (our thread + DAMON's trace reader + kdamond), and the
target's slowdown (wall time per touched page in the window against a
window with no backend).  JSON lines on stdout, a table, docs/accuracy.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass

from idlemap.testing.workload import PAGE, Workload, _Child, _touch

from .common import (
    BENCH,
    REPO,
    add_run_arguments,
    elsewhere,
    measure_here,
    row_writer,
    run_in_vm,
)

MiB = 1 << 20
SCHEMA = "idlemap.bench.accuracy/1"
DOC = os.path.join(REPO, "docs", "accuracy.md")
RESULTS = os.path.join(BENCH, "results", "accuracy.json")
COMMAND = "python -m bench.accuracy"


# -- the child: a logged, pausable access pattern -------------------------------------

class PatternChild(_Child):
    """Workload child plus a pattern loop:

      pattern PACE_MS SPEC...   tiers "NAME:FIRST:COUNT:PERIOD[:STEP]"; tier i is
                                touched in rounds r with r % PERIOD == 0; the loop
                                sleeps PACE_MS between rounds (0: tight loop)
      pause                     finish the round, stop -> "ok ROUNDS"
      resume                    reset the log, go on
      reset                     reset the log without pausing (tight loops)
      truth                     "ok TIERS_TOUCHED ROUNDS PAGES TOUCH_S" since resume/reset
      halt                      end the loop
    """

    def __init__(self):
        super().__init__()
        self.tiers: list = []
        self.pace_s = 0.0
        self.loop_thread: threading.Thread | None = None
        self.halt_evt = threading.Event()
        self.pause_req = threading.Event()
        self.paused = threading.Event()
        self.resume_evt = threading.Event()
        self._reset_log()

    def _reset_log(self):
        import resource
        self.touched = [False] * len(getattr(self, "tiers", []))
        self.p_rounds = 0
        self.p_pages = 0
        self.p_touch_s = 0.0
        self.p_minflt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def _loop(self):
        self.r = 0
        while not self.halt_evt.is_set():
            if self.pause_req.is_set():
                self.paused.set()
                while not self.resume_evt.wait(0.05):
                    if self.halt_evt.is_set():
                        return
                self.resume_evt.clear()
                self.paused.clear()
                continue
            t = time.perf_counter()
            n = 0
            r = self.r
            for i, (arr, first, count, period, step) in enumerate(self.tiers):
                if r % period == 0:
                    n += _touch(arr, step, first, count)
                    self.touched[i] = True
            self.p_touch_s += time.perf_counter() - t
            self.p_pages += n
            self.p_rounds += 1
            self.r = r + 1
            if self.pace_s:
                time.sleep(self.pace_s)

    def cmd_pattern(self, pace_ms, *specs):
        self.cmd_halt()
        tiers = []
        for spec in specs:
            name, first, count, period, *step = spec.split(":")
            _, arr, _ = self.maps[name]
            tiers.append((arr, int(first), int(count), int(period), int(step[0]) if step else 1))
        self.tiers = tiers
        self.pace_s = float(pace_ms) / 1000
        self._reset_log()
        self.halt_evt.clear()
        self.pause_req.clear()
        self.resume_evt.clear()
        self.paused.clear()
        self.loop_thread = threading.Thread(target=self._loop, daemon=True)
        self.loop_thread.start()
        return ""

    def cmd_pause(self):
        self.pause_req.set()
        while not self.paused.wait(0.05):
            if self.loop_thread is None or not self.loop_thread.is_alive():
                break
        return str(self.p_rounds)

    def cmd_resume(self):
        self._reset_log()
        # Round 1 next: every tier of period > 1 waits its full period, so
        # which tiers a window touches depends only on how many rounds it has.
        self.r = 1
        self.pause_req.clear()
        self.resume_evt.set()
        return ""

    def cmd_reset(self):
        self._reset_log()
        return ""

    def cmd_truth(self):
        import resource
        tiers = ",".join(str(i) for i, t in enumerate(self.touched) if t) or "-"
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.p_minflt0
        return f"{tiers} {self.p_rounds} {self.p_pages} {self.p_touch_s:.6f} {minflt}"

    def cmd_halt(self):
        if self.loop_thread is not None:
            self.halt_evt.set()
            self.resume_evt.set()
            self.loop_thread.join()
            self.loop_thread = None
        return ""


def child_main() -> None:
    PatternChild().serve(sys.stdin, sys.stdout)


class PatternWorkload(Workload):
    """Driver side of :class:`PatternChild`."""

    child = "bench.accuracy:child_main"     # same driver, other child

    def pattern(self, pace_ms: float, tiers: list[str]) -> None:
        self.call("pattern", pace_ms, *tiers)

    def truth(self) -> tuple[set[int], int, int, float, int]:
        """(tiers touched, rounds, pages touched, seconds touching, minor faults) since resume."""
        tiers, rounds, pages, touch_s, minflt = self.call("truth").split()
        return (set() if tiers == "-" else {int(x) for x in tiers.split(",")},
                int(rounds), int(pages), float(touch_s), int(minflt))


# -- workloads with exactly known working sets ----------------------------------------

@dataclass(frozen=True)
class Tier:
    name: str
    first: int          # page index in the mapping
    count: int          # pages
    period: int = 1     # touched every PERIOD rounds
    step: int = 1       # every STEP-th page of the tier

    def spec(self) -> str:
        return f"{self.name}:{self.first}:{self.count}:{self.period}:{self.step}"

    def pages(self) -> range:
        return range(self.first, self.first + self.count, self.step)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    maps: tuple[tuple[str, float, tuple[str, ...]], ...]     # (name, MiB, opts) per process
    steady: tuple[tuple[Tier, ...], ...]                      # per process, before the mark
    window: tuple[tuple[Tier, ...], ...]                      # per process, after the mark
    pace_ms: float = 10.0
    tight: bool = False               # never pause (the TLB workload)
    truth: str = "any"                # "any": pages touched by any process; "own": by the target
    label: str = ""

    @property
    def nproc(self) -> int:
        return len(self.window)

    @property
    def title(self) -> str:
        return self.label or self.name


def _pages(mib: float) -> int:
    return int(mib * MiB) // PAGE


def scenarios(size_mib: int = 128, file_dir: str = "/tmp") -> list[Scenario]:
    n = _pages(size_mib)
    hot = n // 4
    d = (("d", size_mib, ("nothp",)),)
    zipf = tuple(Tier("d", ((1 << i) - 1) * (n // 128), (1 << i) * (n // 128), 4 ** i) for i in range(7))
    shared_file = os.path.join(file_dir, f"idlemap-accuracy-shared.{os.getpid()}")
    shared = (("s", size_mib, ("file", shared_file)),)
    a_tiers = (Tier("s", 0, hot),)
    b_tiers = (Tier("s", hot // 2, hot + hot // 2),)
    out = [
        Scenario("uniform", f"{size_mib} MiB, the first quarter touched every round",
                 d, ((Tier("d", 0, hot),),), ((Tier("d", 0, hot),),)),
        Scenario("strided", f"{size_mib} MiB, every 4th page touched every round (no hot range)",
                 d, ((Tier("d", 0, n, 1, 4),),), ((Tier("d", 0, n, 1, 4),),)),
        # 15 ms pace: at most 200 rounds in a 3 s window, so tiers 0-3
        # (periods 1..64) are touched and tiers 4-6 (256..4096) are not.
        Scenario("zipf", f"{size_mib - size_mib // 128} MiB in 7 tiers of doubling size, tier i every 4^i rounds",
                 d, (zipf,), (zipf,), pace_ms=15),
        Scenario("phase", f"{size_mib} MiB; first quarter hot before the mark, third quarter after",
                 d, ((Tier("d", 0, hot),),), ((Tier("d", 2 * hot, hot),),)),
        Scenario("tlb", "64 hot pages in a tight loop (fit the TLB), the rest cold",
                 d, ((Tier("d", 0, 64),),), ((Tier("d", 0, 64),),), pace_ms=0, tight=True),
        Scenario("thp", f"{size_mib} MiB of THP (MADV_HUGEPAGE), the first quarter touched",
                 (("d", size_mib, ("thp",)),), ((Tier("d", 0, hot),),), ((Tier("d", 0, hot),),)),
        Scenario("file", f"{size_mib} MiB MAP_SHARED file in {file_dir} (page cache), first quarter touched",
                 (("d", size_mib, ("file", os.path.join(file_dir, f"idlemap-accuracy-file.{os.getpid()}"))),),
                 ((Tier("d", 0, hot),),), ((Tier("d", 0, hot),),)),
        Scenario("shared", f"{size_mib} MiB file shared by 2 processes: target touches 0-25%, other 12.5-50%",
                 shared + shared, (a_tiers, b_tiers), (a_tiers, b_tiers), truth="any",
                 label="shared (truth: used by anyone)"),
        Scenario("shared", "same, truth = pages the target itself touched",
                 shared + shared, (a_tiers, b_tiers), (a_tiers, b_tiers), truth="own",
                 label="shared (truth: used by the target)"),
    ]
    return out


# -- backends under test --------------------------------------------------------------

BACKEND_CHOICES = ("none", "page_idle", "page_idle+soft-dirty", "clear_refs", "damon", "damon:MIN-MAX")


def damon_variant(name: str, base):
    """"damon" -> base settings; "damon:100-1000" -> base with those region bounds."""
    from dataclasses import replace
    if ":" not in name:
        return base
    lo, hi = name.split(":", 1)[1].split("-")
    return replace(base, attrs=replace(base.attrs, min_nr_regions=int(lo), max_nr_regions=int(hi)))


def make_backend(name: str, proc, damon_settings):
    """One of idlemap's backends, chosen as ``--backend NAME`` would (so an
    unusable one is refused with idlemap's own sentence), in the bench's
    variants: page_idle+FLUSH (its --tlb-flush), damon:MIN-MAX (region bounds)."""
    from idlemap.backends import choose
    base = name.split("+", 1)[0].split(":", 1)[0]
    cls = choose(base).cls
    if base == "page_idle":
        flush = name.split("+", 1)[1] if "+" in name else "none"
        return cls(proc, tlb_flush=flush, with_pss=False)
    if base == "damon":
        return cls(proc, damon_variant(name, damon_settings))
    return cls(proc)


# -- one measurement --------------------------------------------------------------------

@dataclass
class Setup:
    window_s: float = 3.0
    settle_s: float = 1.0
    warm_s: float = 6.0          # DAMON: adapt regions on the steady pattern first
    size_mib: int = 128


def _slice(m, addr: int, npages: int):
    """Flat-array slice of [addr, addr + npages pages) in an IdleMap, or None."""
    for s in m.spans:
        if s.start <= addr < s.end:
            off = s.offset + ((addr - s.start) >> 12)
            if addr + npages * PAGE <= s.end:
                return slice(off, off + npages)
    return None


def _window(w: PatternWorkload, sc: Scenario, window_s: float) -> float | None:
    """One unmonitored window of the steady pattern: ns of wall time per touched page."""
    if sc.tight:
        w.call("reset")
    else:
        w.call("pause")
        w.call("resume")
    time.sleep(window_s)
    _, _, pages, touch_s, minflt = w.truth()
    return (1e9 * touch_s / pages if pages else None), minflt


def measure(sc: Scenario, backend: str, setup: Setup, damon_settings=None, windows: int = 1,
            emit=None) -> list[dict]:
    """``windows`` measurement windows of ``backend`` on a fresh run of ``sc``."""
    from idlemap.kernel.process import identify

    ws = [PatternWorkload() for _ in range(sc.nproc)]
    be = None
    rows = []
    try:
        addrs = []
        for w, (name, mib, opts) in zip(ws, sc.maps):
            a = w.map(name, mib, *opts)
            w.touch(name)                       # populate: cold pages are present too
            addrs.append(a)
        npages = _pages(sc.maps[0][1])
        for w, tiers in zip(ws, sc.steady):
            w.pattern(sc.pace_ms, [t.spec() for t in tiers])
        proc = identify(ws[0].pid)
        time.sleep(setup.settle_s)
        # Baseline window in the same process, nothing monitoring it yet: the
        # target's wall time per touched page and its faults, for the cost.
        base = _window(ws[0], sc, setup.window_s)
        be = None if backend == "none" else make_backend(backend, proc, damon_settings)
        damon = backend.startswith("damon")
        if damon:
            be.start()
        for rep in range(windows):
            if rep == 0 or sc.steady != sc.window:
                if rep > 0:
                    for w, tiers in zip(ws, sc.steady):
                        w.pattern(sc.pace_ms, [t.spec() for t in tiers])
                time.sleep(setup.warm_s if damon else (setup.settle_s if rep > 0 else 0))
            row = _one_window(sc, backend, be, ws, addrs[0], npages, setup, base)
            row["rep"] = rep
            rows.append(row)
            if emit:
                emit(row)
    finally:
        if be is not None:
            be.close()
        for w in ws:
            try:
                w.call("halt")
            except Exception:
                pass
            w.close()
        for _, _, opts in sc.maps:
            if "file" in opts:
                try:
                    os.unlink(opts[opts.index("file") + 1])
                except OSError:
                    pass
    return rows


def _one_window(sc: Scenario, backend: str, be, ws, addr: int, npages: int, setup: Setup, base) -> dict:
    import numpy as np
    damon = backend.startswith("damon")
    cpu = {"main": 0.0, "reader": 0.0, "kdamond": 0.0}
    if not sc.tight:
        for w in ws:
            w.call("pause")
    k0 = r0 = 0.0
    if damon:
        k0, r0 = be.session.kdamond_cpu_s(), be.session.reader_cpu_s()
    c = time.thread_time()
    if be is not None:
        be.mark()
    cpu["main"] += time.thread_time() - c
    if sc.tight:
        ws[0].call("reset")
    else:
        for w, st, wi in zip(ws, sc.steady, sc.window):
            if wi != st:
                w.pattern(sc.pace_ms, [t.spec() for t in wi])     # starts logging at once
            else:
                w.call("resume")
    time.sleep(setup.window_s)
    if not sc.tight:
        for w in ws:
            w.call("pause")
    truths = [w.truth() for w in ws]
    c = time.thread_time()
    sample = be.sample(remark=False) if be is not None else None
    cpu["main"] += time.thread_time() - c
    if damon:
        cpu["kdamond"] = be.session.kdamond_cpu_s() - k0
        cpu["reader"] = be.session.reader_cpu_s() - r0
    if not sc.tight and sc.steady == sc.window:
        for w in ws:
            w.call("resume")                    # keep the steady pattern going

    # ground truth over the target's data mapping
    touched = np.zeros(npages, dtype=bool)
    procs = range(sc.nproc) if sc.truth == "any" else range(1)
    for i in procs:
        tiers, *_ = truths[i]
        for ti in tiers:
            t = sc.window[i][ti]
            touched[t.first:t.first + t.count:t.step] = True
    if sc.tight:
        for t in sc.window[0]:
            touched[t.first:t.first + t.count:t.step] = True
    _, rounds, pages, touch_s, minflt = truths[0]
    base_ns, base_flt = base
    true_b = int(touched.sum()) * PAGE
    ns = 1e9 * touch_s / pages if pages else None
    row = {"schema": SCHEMA, "workload": sc.title, "key": f"{sc.name}/{sc.truth}", "backend": backend,
           "true_bytes": true_b, "rounds": rounds, "ns_per_page": ns, "base_ns_per_page": base_ns,
           "slowdown_pct": 100.0 * (ns / base_ns - 1) if ns and base_ns else None,
           "minflt": minflt, "extra_faults": minflt - base_flt, "window_s": setup.window_s}
    if sample is None:
        return row
    pred = None
    if sample.idle_map is not None:
        sl = _slice(sample.idle_map, addr, npages)
        if sl is not None:
            pred = sample.idle_map.accessed[sl]
    if pred is not None:
        meas_b = int(pred.sum()) * PAGE
        tp = int((pred & touched).sum())
        row["precision"] = tp / int(pred.sum()) if pred.sum() else (1.0 if not touched.any() else 0.0)
        row["recall"] = tp / int(touched.sum()) if touched.any() else 1.0
    else:
        u = next(u for u in sample.by_mapping if u.mapping.start <= addr < u.mapping.end)
        meas_b = u.accessed_bytes
    row.update(measured_bytes=meas_b, error_pct=100.0 * (meas_b - true_b) / true_b if true_b else None,
               scan_cpu_s=sum(cpu.values()), cpu_s=cpu)
    if damon:
        import statistics

        from idlemap.analysis.regions import bytes_within
        from idlemap.analysis.regions import merge_intervals as merge
        from idlemap.records import Span
        data = [Span(next(u.mapping for u in sample.by_mapping
                          if u.mapping.start <= addr < u.mapping.end), addr, addr + npages * PAGE, 0)]
        rb = bytes_within(data, sample.accessed_ranges[:, 0], sample.accessed_ranges[:, 1])
        # DAMON's own one-snapshot view: bytes of accessed regions per
        # aggregation (inside the data mapping), median over the window.
        per = [bytes_within(data, *merge(r[:, 0], r[:, 1])) for r in sample.aggregation_ranges]
        snap = statistics.median(per) if per else 0
        row.update(region_bytes=rb, region_error_pct=100.0 * (rb - true_b) / true_b if true_b else None,
                   snapshot_bytes=snap, snapshot_error_pct=100.0 * (snap - true_b) / true_b if true_b else None,
                   aggregations=sample.aggregations, nr_regions=len(sample.regions),
                   lost_events=sample.lost_events, damon=sample.settings.as_dict())
    return row


# -- the whole study ----------------------------------------------------------------------

def run_here(args) -> list[dict]:
    from idlemap.backends.damon import damon_settings
    st = damon_settings(args.damon_sample_ms, args.damon_aggr_ms, args.damon_update_ms,
                        args.damon_min_regions, args.damon_max_regions)
    setup = Setup(window_s=args.window_s, settle_s=args.settle_s, warm_s=args.warm_s, size_mib=args.size_mib)
    rows = []
    emit = row_writer(args)
    wanted = set(args.workloads.split(",")) if args.workloads else None
    for sc in scenarios(args.size_mib, args.file_dir):
        if wanted and sc.name not in wanted:
            continue
        for b in args.backends.split(","):
            reps = args.repeat_damon if b.startswith("damon") else args.repeat
            rows += measure(sc, b, setup, st, windows=reps, emit=emit)
    return rows


def fmt(v, f="{:.1f}", none="-"):
    return none if v is None else f.format(v)


def backend_label(name: str, meta: dict | None = None) -> str:
    if name.startswith("damon"):
        from idlemap.backends.damon import DEFAULT_ATTRS
        if ":" in name:
            lo, hi = (int(x) for x in name.split(":", 1)[1].split("-"))
        else:
            lo, hi = (int((meta or {}).get("damon_min_regions", 10)),
                      int((meta or {}).get("damon_max_regions", 1000)))
        whose = (", idlemap's default" if (lo, hi) == (DEFAULT_ATTRS.min_nr_regions, DEFAULT_ATTRS.max_nr_regions)
                 else ", DAMON's default" if (lo, hi) == (10, 1000) else "")
        return f"damon ({lo}..{hi} regions{whose})"
    return name


def grouped(rows: list[dict]) -> list[list[dict]]:
    """Rows of the same workload and backend (repeats), in first-seen order."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["key"], r["backend"]), []).append(r)
    return list(out.values())


def _med(group, key):
    import statistics
    v = [r[key] for r in group if r.get(key) is not None]
    return statistics.median(v) if v else None


def _err_cell(group, key="error_pct"):
    v = [r[key] for r in group if r.get(key) is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:+.2f}"
    return f"{_med(group, key):+.1f} [{min(v):+.0f}..{max(v):+.0f}]"


def table(rows: list[dict], meta: dict | None = None) -> list[str]:
    head = ("| Workload | Backend | True WSS (MiB) | Measured (MiB) | Error (% of truth) | Precision | Recall "
            "| Scan CPU (ms) | Target slowdown (%) | Target extra faults |")
    out = [head, "|" + "---|" * 10]
    for g in grouped(rows):
        r = g[0]
        out.append("| " + " | ".join([
            r["workload"], backend_label(r["backend"], meta), fmt(_med(g, "true_bytes") / MiB, "{:.2f}"),
            fmt((_med(g, "measured_bytes") or 0) / MiB, "{:.2f}"), _err_cell(g),
            fmt(_med(g, "precision"), "{:.3f}"), fmt(_med(g, "recall"), "{:.3f}"),
            fmt((_med(g, "scan_cpu_s") or 0) * 1000, "{:.0f}"), fmt(_med(g, "slowdown_pct"), "{:+.0f}"),
            fmt(_med(g, "extra_faults"), "{:+.0f}")]) + " |")
    return out


def damon_table(rows: list[dict], meta: dict | None = None) -> list[str]:
    out = ["| Workload | Settings | Union over the window (pages) | Union over the window (regions) "
           "| One aggregation (median) | Aggregations | Regions at the end | kdamond CPU (ms) |",
           "|" + "---|" * 8]
    for g in grouped([r for r in rows if r["backend"].startswith("damon")]):
        r = g[0]
        out.append("| " + " | ".join([
            r["workload"], backend_label(r["backend"], meta), _err_cell(g), _err_cell(g, "region_error_pct"),
            _err_cell(g, "snapshot_error_pct"), fmt(_med(g, "aggregations"), "{:.0f}"),
            fmt(_med(g, "nr_regions"), "{:.0f}"),
            fmt(1000 * (_med([{"k": x["cpu_s"]["kdamond"]} for x in g], "k") or 0), "{:.0f}")]) + " |")
    return out


def summary(rows: list[dict], meta: dict | None = None) -> list[str]:
    """The figures the guidance rests on, computed from this run's rows."""
    def errs(backend, keys=None, skip=(), field="error_pct"):
        return [r[field] for r in rows if r["backend"] == backend and r.get(field) is not None
                and (keys is None or r["key"] in keys) and r["key"] not in skip]

    def span(v):
        return f"{min(v):+.1f} % .. {max(v):+.1f} %" if v else "-"
    out = []
    pi = errs("page_idle", skip=("tlb/any", "shared/own"))
    out.append(f"* page_idle, every workload but `tlb` and the per-process view of shared memory: "
               f"error {span(pi)} over {len(pi)} windows.")
    out.append(f"* page_idle on `tlb`: {span(errs('page_idle', {'tlb/any'}))}; with the soft-dirty flush: "
               f"{span(errs('page_idle+soft-dirty', {'tlb/any'}))}.")
    out.append(f"* page_idle on shared memory, counting only the target's own accesses: "
               f"{span(errs('page_idle', {'shared/own'}))} (it reports pages *anyone* used).")
    cr = errs("clear_refs", skip=("tlb/any", "shared/any"))
    out.append(f"* clear_refs (per mapping), every workload but `tlb` and shared-by-anyone: error {span(cr)}; "
               f"`tlb`: {span(errs('clear_refs', {'tlb/any'}))}.")
    for b in sorted({r["backend"] for r in rows if r["backend"].startswith("damon")}):
        contig = errs(b, {"uniform/any", "phase/any", "thp/any", "file/any", "shared/own"})
        out.append(f"* {backend_label(b, meta)}, contiguous hot sets (uniform, phase, thp, file, shared-own): "
                   f"union error {span(contig)}; zipf {span(errs(b, {'zipf/any'}))}; "
                   f"strided {span(errs(b, {'strided/any'}))}; tlb {span(errs(b, {'tlb/any'}))}.")
        med = "snapshot_error_pct"
        out.append(f"* {backend_label(b, meta)}, median-aggregation estimate: contiguous "
                   f"{span(errs(b, {'uniform/any', 'phase/any', 'thp/any', 'file/any', 'shared/own'}, field=med))}; "
                   f"zipf {span(errs(b, {'zipf/any'}, field=med))}; strided {span(errs(b, {'strided/any'}, field=med))}; "
                   f"tlb {span(errs(b, {'tlb/any'}, field=med))}.")
    return out


def render_doc(rows: list[dict], meta: dict) -> str:
    from string import Template
    with open(os.path.join(BENCH, "accuracy.md.in")) as f:
        tmpl = Template(f.read())
    return tmpl.substitute(table="\n".join(table(rows, meta)), damon_table="\n".join(damon_table(rows, meta)),
                           summary="\n".join(summary(rows, meta)),
                           **{**{k: str(v) for k, v in meta.items()}, "command": COMMAND})


def in_vm(args) -> int:
    res = run_in_vm("accuracy", args, args.mem_mib)
    return res if isinstance(res, int) else show(res, args)


def show(res: dict, args) -> int:
    if not args.no_doc:
        text = render_doc(res["rows"], res["meta"])
        with open(args.doc, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(args.doc, REPO)}")
    print("\n".join(table(res["rows"], res["meta"])))
    print("\n".join(damon_table(res["rows"], res["meta"])))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, DOC, RESULTS)
    p.add_argument("--workloads", default="", help="comma list of workload names (default: all)")
    p.add_argument("--backends", default="page_idle,page_idle+soft-dirty,clear_refs,damon,damon:100-1000",
                   help="comma list from: " + ", ".join(BACKEND_CHOICES))
    p.add_argument("--size-mib", type=int, default=128)
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--settle-s", type=float, default=1.0)
    p.add_argument("--warm-s", type=float, default=6.0, help="DAMON warm-up before the window")
    p.add_argument("--repeat", type=int, default=2, help="windows per workload for page_idle/clear_refs")
    p.add_argument("--repeat-damon", type=int, default=3, help="windows per workload for DAMON (it is random)")
    p.add_argument("--file-dir", default="/tmp", help="where file-backed workloads put their files")
    p.add_argument("--damon-sample-ms", type=float, default=5)
    p.add_argument("--damon-aggr-ms", type=float, default=100)
    p.add_argument("--damon-update-ms", type=float, default=1000)
    p.add_argument("--damon-min-regions", type=int, default=10)
    p.add_argument("--damon-max-regions", type=int, default=1000)
    p.add_argument("--mem-mib", type=int, default=3072)
    args = p.parse_args(argv)
    rc = elsewhere(args, show, in_vm)
    if rc is not None:
        return rc
    rows, meta = measure_here(
        args, run_here, COMMAND, size_mib=args.size_mib, window_s=args.window_s, warm_s=args.warm_s,
        settle_s=args.settle_s, damon_sample_ms=args.damon_sample_ms, damon_aggr_ms=args.damon_aggr_ms,
        damon_update_ms=args.damon_update_ms, damon_min_regions=args.damon_min_regions,
        damon_max_regions=args.damon_max_regions, repeat=args.repeat, repeat_damon=args.repeat_damon)
    print("\n".join(table(rows, meta)))
    print("\n".join(damon_table(rows, meta)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
