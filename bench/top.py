"""System-wide scan cost: one global page_idle pass against one pass per process.

`idlemap top` measures every process from ONE global mark and ONE read of
the page_idle bitmap per window, over the union of all processes' frames.
The alternative -- what running `idlemap wss` (IdleBitmap) once per process
amounts to -- marks and reads each process's own frames separately, so a
page shared by k processes is marked and read k times, each time with an
rmap walk over all k of its mappings, and there is one LRU drain per process.

Setup: N processes forked from this one after it has imported numpy and
touched --shared-mib of its own memory (so, like pre-fork servers, they
share the interpreter, libraries and that memory copy-on-write), each then
touching --private-mib of memory of its own.  The same N processes are
scanned by each method, steady state (one round = read + re-mark; the
first mark is not counted), --rounds times, the methods' rounds interleaved;
medians are reported, and ratios are medians of per-round ratios.

Methods:
  global/frames  PageIdleSystemScanner, sorted coalesced union (top's default)
  global/range   PageIdleSystemScanner(mark="range"): whole frame range (wss-v2-like)
  per-process    for each process: the same pagemap walk, a drain, read + mark
                 of its own frames (the bitmap passes alone differ from global)
  IdleBitmap     for each process: IdleBitmap.read(remark=True), the library's
                 per-process API as `idlemap wss` uses it

Needs CONFIG_IDLE_PAGE_TRACKING and root: on a kernel without page_idle it
runs itself in idlemap's test VM.  Prints a table to stderr and one JSON
document (schema idlemap.bench.top/1) to stdout.

    python -m bench.top                       # 20 processes (in the VM here)
    python -m bench.top --procs 5,10,20 --rounds 5
"""
from __future__ import annotations

import argparse
import mmap
import os
import platform
import signal
import statistics
import sys

import numpy as np

from idlemap.backends.system import PageIdleSystemScanner, Selection, walk_process
from idlemap.bitmap import IdleBitmap
from idlemap.kernel import lru, page_idle
from idlemap.kernel.page_idle import PageIdleBitmap

from .common import emit_json, timed_wall_cpu, vm_run

SCHEMA = "idlemap.bench.top/1"
MiB = 1 << 20
PAGE = mmap.PAGESIZE


def spawn(n: int, private_mib: int) -> list[int]:
    pids = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                m = mmap.mmap(-1, private_mib * MiB)
                a = np.frombuffer(m, dtype=np.uint8)
                a[::PAGE] = 1
                os.write(w, b"k")
                while True:
                    signal.pause()
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        pids.append(pid)
    return pids


def reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class GlobalMethod:
    def __init__(self, pids, mark):
        self.sc = PageIdleSystemScanner(Selection(pids=frozenset(pids)), mark=mark)
        self.sc.mark()
        self.last = None

    def round(self):
        self.last = self.sc.sample(remark=True)

    def close(self):
        self.sc.close()


class PerProcessMethod:
    """The same walk as the global scanner, then each process's own frames
    read and re-marked separately (with a drain each, as IdleBitmap does)."""

    def __init__(self, pids):
        self.pids = pids
        self.bm = PageIdleBitmap()
        self.frames_sum = 0
        for pid in pids:
            self.bm.set_idle(walk_process(pid).pfns)

    def round(self):
        self.frames_sum = 0
        for pid in self.pids:
            f = walk_process(pid)
            self.frames_sum += f.size
            plan = self.bm.plan(f.pfns)
            self.bm.read_plan(plan)
            lru.drain_all()
            self.bm.remark_plan(plan)       # only what read accessed, as the others do

    def close(self):
        self.bm.close()


class IdleBitmapMethod:
    """The library's per-process API, as `idlemap wss` uses it."""

    def __init__(self, pids):
        self.bms = [IdleBitmap(pid) for pid in pids]
        for b in self.bms:
            b.mark_idle()

    def round(self):
        for b in self.bms:
            b.read(remark=True)

    def close(self):
        for b in self.bms:
            b.close()


def measure(pids, rounds, with_idlebitmap):
    """Rounds interleaved (A B C D, A B C D, ...) so that a change in the
    machine's load (the VM shares its host) hits every method alike."""
    methods = {"global_frames": GlobalMethod(pids, "frames"), "global_range": GlobalMethod(pids, "range"),
               "per_process": PerProcessMethod(pids)}
    if with_idlebitmap:
        methods["idlebitmap"] = IdleBitmapMethod(pids)
    times = {k: [] for k in methods}
    try:
        for _ in range(rounds):
            for k, m in methods.items():
                times[k].append(timed_wall_cpu(m.round)[:2])
        return times, methods["global_frames"].last, methods["per_process"].frames_sum
    finally:
        for m in methods.values():
            m.close()


def med(xs):
    return statistics.median(xs)


def run_in_guest(args) -> int:
    if not page_idle.available() or os.geteuid() != 0:
        print("bench.top needs page_idle (CONFIG_IDLE_PAGE_TRACKING) and root", file=sys.stderr)
        return 69
    shared = mmap.mmap(-1, args.shared_mib * MiB)
    np.frombuffer(shared, dtype=np.uint8)[::PAGE] = 1     # inherited copy-on-write
    results = []
    for n in args.procs:
        pids = spawn(n, args.private_mib)
        try:
            times, s, frames_sum = measure(pids, args.rounds, not args.no_idlebitmap)
        finally:
            reap(pids)
        r = {"procs": n, "union_frames": s.frames, "frames_summed_over_processes": frames_sum,
             "total_rss_bytes": s.total_rss_bytes, "rounds": args.rounds}
        for k, tc in times.items():
            r[f"{k}_s"] = med([w for w, _ in tc])
            r[f"{k}_cpu_s"] = med([c for _, c in tc])
        g = [w for w, _ in times["global_frames"]]
        # Ratio per round (same load), then the median of those.
        r["per_process_over_global"] = med([w / x for (w, _), x in zip(times["per_process"], g)])
        if "idlebitmap" in times:
            r["idlebitmap_over_global"] = med([w / x for (w, _), x in zip(times["idlebitmap"], g)])
        else:
            r["idlebitmap_s"] = r["idlebitmap_cpu_s"] = None
        results.append(r)
        print(f"  {n} processes done", file=sys.stderr, flush=True)
    doc = {"schema": SCHEMA, "kernel": platform.release(), "cpus": os.cpu_count(),
           "shared_mib": args.shared_mib, "private_mib": args.private_mib, "results": results}
    table(doc)
    emit_json(doc, one_line=True)
    return 0


def table(doc) -> None:
    e = sys.stderr
    print(f"\nkernel {doc['kernel']}, {doc['cpus']} CPUs; each process: {doc['private_mib']} MiB own + "
          f"{doc['shared_mib']} MiB shared copy-on-write; median of {doc['results'][0]['rounds']} "
          "steady-state rounds (read + re-mark), wall seconds (CPU seconds)", file=e)
    hdr = f"{'PROCS':>5} {'UNION_FRAMES':>12} {'SUM_FRAMES':>11} {'GLOBAL(s)':>15} {'RANGE(s)':>15} " \
          f"{'PER_PROC(s)':>15} {'IDLEBITMAP(s)':>15} {'PER_PROC/GLOBAL':>15} {'IDLEBITMAP/GLOBAL':>17}"
    print(hdr, file=e)
    for r in doc["results"]:
        ib = f"{r['idlebitmap_s']:.3f} ({r['idlebitmap_cpu_s']:.3f})" if r["idlebitmap_s"] else "-"
        print(f"{r['procs']:>5} {r['union_frames']:>12} {r['frames_summed_over_processes']:>11} "
              f"{r['global_frames_s']:>6.3f} ({r['global_frames_cpu_s']:.3f}) "
              f"{r['global_range_s']:>6.3f} ({r['global_range_cpu_s']:.3f}) "
              f"{r['per_process_s']:>6.3f} ({r['per_process_cpu_s']:.3f}) {ib:>15} "
              f"{r['per_process_over_global']:>14.2f}x "
              f"{r.get('idlebitmap_over_global', float('nan')):>16.2f}x", file=e)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="20", help="process counts, comma-separated (default 20)")
    ap.add_argument("--private-mib", type=int, default=16, help="memory each process touches of its own")
    ap.add_argument("--shared-mib", type=int, default=64, help="memory touched before forking (shared COW)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-idlebitmap", action="store_true", help="skip the IdleBitmap baseline")
    ap.add_argument("--here", action="store_true", help="never go to the VM")
    args = ap.parse_args()
    args.procs = [int(x) for x in args.procs.split(",")]
    if not args.here and not page_idle.available():
        print("no page_idle on this kernel: running in idlemap's test VM", file=sys.stderr, flush=True)
        return vm_run("top", ["--here", *sys.argv[1:]], mem_mib=3072)
    return run_in_guest(args)


if __name__ == "__main__":
    sys.exit(main())
