"""How often do hot pages read idle because the TLB hid their accesses, and
what can a user-space tool do about it?

    python -m bench.tlb            # boots the test VM, writes docs/tlb.md
    python -m bench.tlb --here     # on this kernel (page_idle, soft-dirty, root)

Marking a page idle clears the accessed bit in its PTE without flushing the
TLB (mm/page_idle.c -> ptep_clear_young_notify; x86 never flushes for
"young").  The CPU sets the accessed bit only when it walks the page table,
so a translation still cached from before the mark lets the page be used
without the bit coming back: a hot page reads idle.  Small hot sets in tight
loops stay in the TLB; that is the case measured here.

The target: N hot pages of a 64 MiB mapping touched in a tight loop (never
pausing), the rest untouched.  Per window: apply a method around the mark,
wait window_s, read the bitmap, count hot pages read idle (false idle) and
cold pages read accessed (false accessed).  Methods a user-space tool has:

  none            mark only
  soft-dirty      mark, then clear_refs=4 (ends in flush_tlb_mm in 6.1) --
                  idlemap's --tlb-flush soft-dirty
  soft-dirty-1st  clear_refs=4, then mark (the order matters?)
  clear_refs-1    mark, then clear_refs=1 (clears accessed bits; flush?)
  madv-cold       mark, then process_madvise(MADV_COLD) over the mapping
                  (flushes the TLB entries of PTEs it finds young)
  rescan          mark, read after window_s, read again after another
                  window_s without marking: caught late?

Cost per method: CPU time of the mark (+ mitigation), the target's minor
faults in the window, its wall time per touched page against "none", and
TLB shootdown IPIs (/proc/interrupts "TLB") during the mark: a direct check
of which method flushes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from idlemap.kernel.process_madvise import MADV_COLD, pidfd_open, process_madvise

from .accuracy import PatternWorkload
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
PAGE = 4096
SCHEMA = "idlemap.bench.tlb/1"
DOC = os.path.join(REPO, "docs", "tlb.md")
RESULTS = os.path.join(BENCH, "results", "tlb.json")
COMMAND = "python -m bench.tlb"
METHODS = ("none", "soft-dirty", "soft-dirty-1st", "clear_refs-1", "madv-cold", "rescan")

def madvise_cold(pid: int, ranges: list[tuple[int, int]]) -> None:
    """MADV_COLD over ``ranges`` through idlemap's own process_madvise; a
    range the kernel refused fails the window (its TLB was not flushed)."""
    pidfd = pidfd_open(pid)
    try:
        res = process_madvise(pidfd, pid, [a for a, _ in ranges], [b - a for a, b in ranges], MADV_COLD)
    finally:
        os.close(pidfd)
    if res.failed:
        raise OSError(f"process_madvise(MADV_COLD) refused {res.failed}")


def tlb_ipis() -> int:
    """TLB shootdown IPIs received so far, all CPUs (x86 /proc/interrupts "TLB")."""
    with open("/proc/interrupts") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "TLB":
                return sum(int(x) for x in rest.split() if x.isdigit())
    return -1


def one_window(w: PatternWorkload, addr: int, npages: int, hot: int, method: str, window_s: float) -> dict:
    import numpy as np

    from idlemap.bitmap import IdleBitmap
    from idlemap.kernel import clear_refs as cr

    rng = [(addr, addr + npages * PAGE)]
    with IdleBitmap(w.pid, tlb_flush="soft-dirty" if method == "soft-dirty" else "none") as bm:
        ipi0 = tlb_ipis()
        c = time.thread_time()
        if method == "soft-dirty-1st":
            cr.clear_refs(w.pid, cr.CLEAR_SOFT_DIRTY)
        bm.mark_idle(rng)
        if method == "clear_refs-1":
            cr.clear_refs(w.pid, cr.CLEAR_ALL)
        elif method == "madv-cold":
            madvise_cold(w.pid, rng)
        cpu = time.thread_time() - c
        ipis = tlb_ipis() - ipi0
        w.call("reset")
        time.sleep(window_s)
        m = bm.read(rng)
        if method == "rescan":
            time.sleep(window_s)
            m = bm.read(rng)
        _, rounds, pages, touch_s, minflt = w.truth()
    idle = m.idle[:npages]
    present = m.present[:npages]
    return {"false_idle": int(np.count_nonzero(idle[:hot])), "hot": hot,
            "false_accessed": int(np.count_nonzero(present[hot:] & ~idle[hot:])),
            "mark_cpu_s": cpu, "tlb_ipis": ipis, "rounds": rounds,
            "ns_per_page": 1e9 * touch_s / pages if pages else None, "minflt": minflt}


def run_here(args) -> list[dict]:
    rows = []
    emit = row_writer(args)
    for hot in [int(x) for x in args.hot_pages.split(",")]:
        with PatternWorkload() as w:
            addr = w.map("d", args.size_mib, "nothp")
            w.touch("d")
            npages = args.size_mib * MiB // PAGE
            w.pattern(0, [f"d:0:{hot}:1:1"])           # tight loop, never pauses
            time.sleep(0.5)
            for rep in range(args.repeat):
                for method in args.methods.split(","):
                    r = one_window(w, addr, npages, hot, method, args.window_s)
                    r.update(schema=SCHEMA, method=method, rep=rep)
                    rows.append(r)
                    emit(r)
            w.call("halt")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = []
    for r in rows:
        k = (r["hot"], r["method"])
        if k not in keys:
            keys.append(k)
    for hot, method in keys:
        g = [r for r in rows if r["hot"] == hot and r["method"] == method]
        base = [r for r in rows if r["hot"] == hot and r["method"] == "none" and r["ns_per_page"]]
        fi = [100.0 * r["false_idle"] / hot for r in g]
        ns = [r["ns_per_page"] for r in g if r["ns_per_page"]]
        bns = statistics.median([r["ns_per_page"] for r in base]) if base else None
        out.append({
            "hot": hot, "method": method, "windows": len(g),
            "false_idle_pct_median": statistics.median(fi), "false_idle_pct_max": max(fi),
            "false_idle_pct_min": min(fi),
            "false_accessed_max": max(r["false_accessed"] for r in g),
            "mark_cpu_ms": 1000 * statistics.median(r["mark_cpu_s"] for r in g),
            "tlb_ipis": statistics.median(r["tlb_ipis"] for r in g),
            "minflt": statistics.median(r["minflt"] for r in g),
            "slowdown_pct": (100.0 * (statistics.median(ns) / bns - 1)) if ns and bns else None})
    return out


def table(summary: list[dict]) -> list[str]:
    out = ["| Hot pages | Method | Hot pages read idle (% median [min..max]) | Cold pages read accessed (max) "
           "| Mark + mitigation CPU (ms) | TLB shootdown IPIs | Target minor faults | Target slowdown (%) |",
           "|" + "---|" * 8]
    for s in summary:
        sl = "-" if s["slowdown_pct"] is None else f"{s['slowdown_pct']:+.0f}"
        out.append(f"| {s['hot']} | {s['method']} | {s['false_idle_pct_median']:.1f} "
                   f"[{s['false_idle_pct_min']:.0f}..{s['false_idle_pct_max']:.0f}] | {s['false_accessed_max']} "
                   f"| {s['mark_cpu_ms']:.1f} | {s['tlb_ipis']:.0f} | {s['minflt']:.0f} | {sl} |")
    return out


def render(res: dict, args) -> int:
    summary = summarize(res["rows"])
    if not args.no_doc:
        from string import Template
        with open(os.path.join(BENCH, "tlb.md.in")) as f:
            text = Template(f.read()).substitute(table="\n".join(table(summary)),
                                                 **{**{k: str(v) for k, v in res["meta"].items()},
                                                    "command": COMMAND})
        with open(args.doc, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(args.doc, REPO)}")
    print("\n".join(table(summary)))
    return 0


def in_vm(args) -> int:
    res = run_in_vm("tlb", args, 2048)
    return res if isinstance(res, int) else render(res, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p, DOC, RESULTS)
    p.add_argument("--hot-pages", default="8,64,512,4096,16384")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--window-s", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    rc = elsewhere(args, render, in_vm)
    if rc is not None:
        return rc
    rows, _ = measure_here(args, run_here, COMMAND, size_mib=args.size_mib, window_s=args.window_s,
                           repeat=args.repeat)
    print("\n".join(table(summarize(rows))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
