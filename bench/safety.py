"""Safe by default, measured: a hot set touched continuously at C speed,
under each command's default options and with the TLB protection off.

    python -m bench.safety          # boots the test VM (page_idle, zram, 2 NUMA nodes)
    python -m bench.safety --here   # on this kernel (needs page_idle, swap, 2 nodes, root)

The target is tests/system/hotset.c: HOT MiB written one byte per page in a
loop that never sleeps (its translations stay in the TLB), COLD MiB written
once.  Pinned: target on CPU 0, idlemap on CPU 1 (the target never
context-switches); unpinned: the scheduler decides.  Per case:

  wss      8 windows of 0.5 s: the data mapping's accessed MiB against the
           truth (HOT), the target's minor faults per window, and its speed
           (passes over the hot set per second) against an unscanned run
  reclaim  `reclaim --cold-for 3`: hot pages swapped out, the target's major
           faults (hot pages paged out and faulted back), cold pages out
  tier     hot set first on the slow node, cold on the fast, then
           `tier --count 8`: hot pages on the fast node, cold on the slow
           (placement from move_pages' status query, not idlemap's answer)

"default" is each command's defaults (--tlb-flush auto: clear_refs 4 after
every mark); "unflushed" is --tlb-flush none, or --unsafe-no-tlb-flush for
the actions.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time

from .common import (
    BENCH,
    REPO,
    add_run_arguments,
    elsewhere,
    emit_json,
    run_in_vm,
    save_here,
    use_system_test_helpers,
)

MiB = 1 << 20
PAGE = 4096
HOT_MIB, COLD_MIB = 96, 64
SCHEMA = "idlemap.bench.safety/1"
RESULTS = os.path.join(BENCH, "results", "safety.json")
DOC = os.path.join(REPO, "docs", "tlb-defaults.md")


def _cli(*argv) -> tuple[int, list[dict]]:
    from idlemap.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, [json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{")]


def target(placement: str):
    use_system_test_helpers()
    from fleet_helpers import hot_loop
    return hot_loop(HOT_MIB, COLD_MIB, placement)


def _faults(pid: int) -> tuple[int, int]:
    from idlemap.kernel.process import fault_counts
    return fault_counts(pid)


def case_wss(placement: str, mode: str, windows: int = 8, window_s: float = 0.5) -> dict:
    def speed(seconds: float) -> float:
        p0, t0 = w.passes(), time.monotonic()
        time.sleep(seconds)
        return (w.passes() - p0) / (time.monotonic() - t0)

    with target(placement) as w:
        # The target's speed unscanned, before and after the scanned run
        # (their mean: the emulator's speed drifts), against its speed
        # while scanned.
        before = speed(windows * window_s)
        flt0 = _faults(w.pid)
        p0, t0 = w.passes(), time.monotonic()
        rc, rows = _cli("wss", w.pid, window_s, windows, "--json", "--by-mapping", "--tlb-flush", mode)
        rate = (w.passes() - p0) / (time.monotonic() - t0)
        flt1 = _faults(w.pid)
        base_rate = (before + speed(windows * window_s)) / 2
    hot = [[m for m in r["by_mapping"] if int(m["start"], 16) == w.addr][0]["wss_bytes"] / MiB
           for r in rows if "by_mapping" in r]
    err = [100.0 * (v - HOT_MIB) / HOT_MIB for v in hot]
    return {"case": "wss", "placement": placement, "mode": mode, "rc": rc, "hot_mib": HOT_MIB,
            "read_mib": [round(v, 2) for v in hot], "error_pct_median": round(statistics.median(err), 2),
            "error_pct_worst": round(min(err, key=lambda e: -abs(e)), 2),
            "windows_within_1pct": sum(abs(e) <= 1.0 for e in err), "windows": len(err),
            "minor_faults_per_window": round((flt1[0] - flt0[0]) / max(1, len(err))),
            "slowdown_pct": round(100.0 * (1 - rate / base_rate), 1) if base_rate else None}


def case_reclaim(placement: str, mode: str) -> dict:
    import numpy as np

    from idlemap.kernel import pagemap as pm
    hot, cold = HOT_MIB * MiB // PAGE, COLD_MIB * MiB // PAGE
    extra = ["--unsafe-no-tlb-flush"] if mode == "none" else []
    with target(placement) as w:
        maj0 = _faults(w.pid)[1]
        t0 = time.monotonic()
        rc, rows = _cli("reclaim", w.pid, "--cold-for", 3, "--json", *extra)
        wall = time.monotonic() - t0
        maj = _faults(w.pid)[1] - maj0
        with pm.Pagemap(w.pid) as p:
            e = p.read(w.addr // PAGE, hot + cold)
    present, swapped = (e & pm.PRESENT) != 0, (e & pm.SWAPPED) != 0
    s = rows[-1] if rows else {}
    return {"case": "reclaim", "placement": placement, "mode": mode, "rc": rc, "wall_s": round(wall, 1),
            "hot_swapped_pct": round(100.0 * np.count_nonzero(swapped[:hot]) / hot, 2),
            "major_faults": maj, "major_faults_pct_of_hot": round(100.0 * maj / hot, 2),
            "cold_out_pct": round(100.0 * np.count_nonzero(swapped[hot:] | ~present[hot:]) / cold, 1),
            "stop_reason": s.get("stop_reason")}


def case_tier(placement: str, mode: str) -> dict:
    import numpy as np

    from idlemap.kernel import numa
    fast, slow = numa.online_nodes()[:2]
    hot, cold = HOT_MIB * MiB // PAGE, COLD_MIB * MiB // PAGE
    extra = ["--unsafe-no-tlb-flush"] if mode == "none" else []
    with target(placement) as w:
        addrs = (w.addr + (np.arange(hot + cold, dtype=np.uint64) << np.uint64(12))).astype(np.uint64)
        start = np.where(np.arange(hot + cold) < hot, slow, fast).astype(np.int32)
        numa.move_pages(w.pid, addrs, start)
        rc, rows = _cli("tier", w.pid, "--fast", fast, "--slow", slow, "--json", "--count", 8, *extra)
        node = numa.move_pages(w.pid, addrs)
    return {"case": "tier", "placement": placement, "mode": mode, "rc": rc,
            "hot_on_fast_pct": round(100.0 * np.count_nonzero(node[:hot] == fast) / hot, 2),
            "cold_on_slow_pct": round(100.0 * np.count_nonzero(node[hot:] == slow) / cold, 2)}


def measure(args) -> list[dict]:
    import subprocess

    from idlemap.kernel import numa
    rows = []
    zram = "/sys/block/zram0"
    swap = False
    if not args.no_swap and os.path.exists(zram):
        with open(f"{zram}/disksize", "w") as f:
            f.write("1G")
        subprocess.run(["mkswap", "/dev/zram0"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["swapon", "/dev/zram0"], check=True)
        swap = True
    try:
        for placement in ("pinned", "unpinned"):
            for mode in ("soft-dirty", "none"):
                for fn in (case_wss, case_reclaim if swap else None,
                           case_tier if len(numa.online_nodes()) >= 2 else None):
                    if fn is None:
                        continue
                    r = fn(placement, "auto" if mode == "soft-dirty" else "none")
                    r["mode"] = "default" if mode == "soft-dirty" else "unflushed"
                    print(json.dumps(r), flush=True)
                    rows.append(r)
    finally:
        if swap:
            subprocess.run(["swapoff", "/dev/zram0"], check=False)
            with open(f"{zram}/reset", "w") as f:
                f.write("1")
    return rows


def table(rows: list[dict]) -> str:
    out = ["| case | target | options | result | cost |", "|---|---|---|---|---|"]
    for r in rows:
        if r["case"] == "wss":
            res = (f"{r['windows_within_1pct']}/{r['windows']} windows within 1%; median error "
                   f"{r['error_pct_median']:+.1f}%, worst {r['error_pct_worst']:+.1f}%")
            cost = f"{r['minor_faults_per_window']} minor faults/window; target slowdown {r['slowdown_pct']}%"
        elif r["case"] == "reclaim":
            res = (f"hot swapped out {r['hot_swapped_pct']}%; cold paged out {r['cold_out_pct']}%; "
                   f"{r['stop_reason']}")
            cost = f"{r['major_faults']} major faults ({r['major_faults_pct_of_hot']}% of hot pages)"
        else:
            res = f"hot on fast node {r['hot_on_fast_pct']}%; cold on slow node {r['cold_on_slow_pct']}%"
            cost = ""
        out.append(f"| {r['case']} | {r['placement']} | {r['mode']} | {res} | {cost} |")
    return "\n".join(out)


def render(doc: dict, args) -> int:
    t = table(doc["rows"])
    print(t)
    if args.no_doc:
        return 0
    m = doc["meta"]
    text = f"""# Safe by default: a continuously hot workload under each command's defaults

<!-- Generated by `python -m bench.safety` (raw rows in bench/results/safety.json); do not edit. -->

Linux {m['kernel']} in the test VM (QEMU TCG, {m['cpus']} vCPUs, 2 NUMA nodes, zram swap);
target: tests/system/hotset.c, {m['hot_mib']} MiB written one byte per page in a loop that never
sleeps, {m['cold_mib']} MiB written once; pinned = target on CPU 0 and idlemap on CPU 1.
"default" is each command's default options (`--tlb-flush auto`: `clear_refs` 4 after every
mark); "unflushed" is `--tlb-flush none` (wss) or `--unsafe-no-tlb-flush` (reclaim, tier).
Slowdown: the target's passes over its hot set per second while scanned, against the same
time unscanned just before.  Placement is the kernel's (pagemap swap bits, move_pages
status, the target's major-fault count), not idlemap's answer.  {m['seconds']} s.

{t}

Why the defaults are what they are: docs/tlb.md.
"""
    with open(args.doc, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(args.doc, REPO)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, DOC, RESULTS)
    p.add_argument("--no-swap", action="store_true", help="skip reclaim (no zram here)")
    args = p.parse_args()
    rc = elsewhere(args, render, lambda a: _from_vm(a))
    if rc is not None:
        return rc
    from idlemap.kernel.features import probe
    t0 = time.time()
    rows = measure(args)
    meta = {"schema": SCHEMA, "kernel": os.uname().release, "cpus": os.cpu_count(),
            "hot_mib": HOT_MIB, "cold_mib": COLD_MIB, "seconds": round(time.time() - t0),
            "soft_dirty": probe().soft_dirty}
    save_here(args, rows, meta)
    if not args.result_dir:
        emit_json({"rows": rows, "meta": meta}, None)
        print(table(rows))
    return 0


def _from_vm(args) -> int:
    res = run_in_vm("safety", args, mem_mib=3072, numa_nodes=2)
    if isinstance(res, int):
        return res
    emit_json(res, None)
    return render(res, args)


if __name__ == "__main__":
    raise SystemExit(main())
