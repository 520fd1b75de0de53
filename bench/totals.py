"""Totals-only path on the HOST kernel: clear_refs + smaps(_rollup), ns/page.

Gregg's wss.pl strategy, and idlemap's clear_refs backend: write 1 to
/proc/PID/clear_refs (clears every PTE's accessed bit), let the target run,
then sum ``Referenced:`` from /proc/PID/smaps (per mapping) or read
smaps_rollup (one total).  No per-page map, but no page_idle needed either,
and it runs natively here (no VM), so it also gives a native pagemap rate
to set the guest's TCG figures against.

    python -m bench.totals [--sizes 256,1024,4096] [--out FILE]

Prints a table to stderr and JSON to stdout.  Needs root only for
pagemap frame numbers (the clear_refs path works as the target's owner).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from idlemap.backends import choose
from idlemap.kernel import clear_refs as cr
from idlemap.kernel import pagemap as pm
from idlemap.kernel.maps import PAGE_SIZE
from idlemap.kernel.process import identify
from idlemap.testing.workload import Workload

from .common import emit_json, median_wall_s

MiB = 1 << 20
SCHEMA = "idlemap.bench.totals/1"


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def one(mib: int, reps: int) -> dict:
    with Workload() as w:
        lo = w.map("t", mib, "nothp")
        w.touch("t", 1)
        npages = mib * MiB // PAGE_SIZE
        pid = w.pid
        t_clear = median_wall_s(lambda: cr.clear_refs(pid, cr.CLEAR_ALL), reps)
        t_rollup = median_wall_s(lambda: read_file(f"/proc/{pid}/smaps_rollup"), reps)
        t_smaps = median_wall_s(lambda: read_file(f"/proc/{pid}/smaps"), reps)
        with pm.Pagemap(pid) as pmap:
            buf = np.empty(npages, np.uint64)
            t_pagemap = median_wall_s(lambda: pmap.read(lo // PAGE_SIZE, npages, buf), reps)
        # idlemap's clear_refs backend, whole window: mark + sample (parse)
        be = choose("clear_refs").cls(identify(pid))
        cyc = []
        exact = True
        for _ in range(reps):
            t0 = time.perf_counter()
            be.mark()
            t1 = time.perf_counter()
            w.touch("t", 2)
            t2 = time.perf_counter()
            s = be.sample(remark=False)
            t3 = time.perf_counter()
            cyc.append((t1 - t0) + (t3 - t2))
            ref = next(u.accessed_bytes for u in s.by_mapping if u.mapping.start <= lo < u.mapping.end)
            exact &= ref == (npages + 1) // 2 * PAGE_SIZE
        t_cycle = statistics.median(cyc)
    ns = lambda t: t / npages * 1e9  # noqa: E731
    return {"target_mib": mib, "target_pages": npages,
            "clear_refs_s": t_clear, "smaps_rollup_s": t_rollup, "smaps_s": t_smaps,
            "pagemap_s": t_pagemap, "backend_cycle_s": t_cycle,
            "ns_per_page": {"clear_refs": ns(t_clear), "smaps_rollup": ns(t_rollup),
                            "smaps": ns(t_smaps), "clear_refs+rollup": ns(t_clear + t_rollup),
                            "clear_refs+smaps": ns(t_clear + t_smaps),
                            "idlemap_clear_refs_backend_cycle": ns(t_cycle),
                            "pagemap": ns(t_pagemap)},
            "exact": exact}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,1024,4096", help="target sizes, MiB")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rows = [one(int(s), args.reps) for s in args.sizes.split(",") if s]
    doc = {"schema": SCHEMA, "kernel": platform.release(), "cpus": os.cpu_count(), "rows": rows,
           "note": "host kernel, native; Referenced summed from smaps by idlemap's clear_refs backend"}
    print(f"{'MiB':>6} {'clear_refs':>11} {'rollup':>8} {'smaps':>8} {'clr+rollup':>11} "
          f"{'backend':>8} {'pagemap':>8}   (ns/page)  exact", file=sys.stderr)
    for r in rows:
        n = r["ns_per_page"]
        print(f"{r['target_mib']:>6} {n['clear_refs']:>11.1f} {n['smaps_rollup']:>8.1f} {n['smaps']:>8.1f} "
              f"{n['clear_refs+rollup']:>11.1f} {n['idlemap_clear_refs_backend_cycle']:>8.1f} "
              f"{n['pagemap']:>8.1f}   {r['exact']}", file=sys.stderr)
    emit_json(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
