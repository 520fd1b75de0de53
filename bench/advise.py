"""How close is the savings advisor to the truth, and what does the cgroup
reclaim loop achieve?  Regenerates the measured table of docs/advise.md.

    python -m bench.advise            # boots the test VM, rewrites the table in docs/advise.md
    python -m bench.advise --here     # on this kernel (page_idle, cgroup v2 memory, PSI, root)
    python -m bench.advise --damos    # idlemap against DAMOS in Debian's stock 6.12 (bench/advise_damos.py)

Four runs, each on static C workloads with a known schedule
(tests/system/schedule.c; the truth comes from the schedule, computed in
tests/system/sched_helpers.py, not by analysis/advise.py):

  advisor    two processes in one cgroup -- (32 MiB hot, 4 warm groups of
             8 MiB, each back every 4th round, 64 MiB cold) and (16 hot, 2
             groups of 4, 48 cold) -- 12 rounds driven between exact
             touches, summed by CgroupScan (`advise --cgroup`): cold memory
             and promotion rate per threshold against the truth, the
             advised threshold and its savings.
  psi-loop   one process in a cgroup: a 64 MiB hot loop that never pauses and
             192 MiB never touched again; `reclaim --cgroup` (1 s rounds, PSI
             target 0.1%, advisor target 5%/min) for 16 rounds: share of the
             cold set reclaimed and of the hot set resident (pagemap), PSI
             some avg10 (every round and at the end), refaults.  Twice: the
             requests written to memory.reclaim (the kernel's LRU picks the
             pages), then as MADV_PAGEOUT of the pages read cold (--via pageout).
  promotion  a 32 MiB hot loop, a 4 MiB warm set touched before every 8th
             round, 128 MiB cold; the loop's promotion goal alone
             (0.2%/min; PSI and refault guards and the advisor's target out of
             the way): back-offs, the threshold floor, what came back, and
             what is resident at the end.

Swap is zram (1 GiB) and each run has a cgroup of its own under
/sys/fs/cgroup (idlemap.testing.machine, as the VM tests), set up and
removed here.  The DAMOS side-by-side of issue 18 is ``--damos``
(bench/advise_damos.py: another kernel, its own table and results file).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .common import (
    BENCH,
    REPO,
    add_run_arguments,
    elsewhere,
    measure_here,
    row_writer,
    run_in_vm,
    use_system_test_helpers,
)

MiB = 1 << 20
SCHEMA = "idlemap.bench.advise/1"
DOC = os.path.join(REPO, "docs", "advise.md")
RESULTS = os.path.join(BENCH, "results", "advise.json")
RESULTS_DAMOS = os.path.join(BENCH, "results", "advise-damos.json")
COMMAND = "python -m bench.advise"
BEGIN, END = "<!-- bench.advise: begin -->", "<!-- bench.advise: end -->"


# -- the machine: zram swap and a cgroup come from idlemap.testing.machine --------------

def present(pid: int, addr: int, npages: int):
    from idlemap.kernel import pagemap as pm
    with pm.Pagemap(pid) as p:
        return (p.read(addr >> 12, npages) & pm.PRESENT) != 0


def psi_avg10(path: str) -> float:
    with open(f"{path}/memory.pressure") as f:
        return float(f.read().split()[1].split("=")[1])


# -- the runs -----------------------------------------------------------------------------

def run_advisor(args) -> dict:
    from sched_helpers import Schedule, Shape, group_truth

    from idlemap.cgroup_scan import CgroupScan
    from idlemap.kernel import cgroup as cg
    from idlemap.testing.machine import cgroup
    shapes = [Shape(32, 8, 4, 64), Shape(16, 4, 2, 48)]
    n = args.rounds
    with cgroup("advisor") as path:
        procs = [Schedule(s, path) for s in shapes]
        try:
            scan = CgroupScan(cg.resolve(path), kmax=n)
            windows = []
            try:
                scan.start()
                for _ in range(n):
                    for p in procs:
                        p.round()
                    time.sleep(args.settle_s)
                    windows.append(scan.round().window_s)
                adv = scan.acc.advice(args.target)
                tlb = scan.tlb
            finally:
                scan.close()
        finally:
            for p in procs:
                p.close()
    thresholds = []
    for t in adv.thresholds:
        tr = group_truth(shapes, t.rounds, windows, n)
        thresholds.append({"k": t.rounds, "cold_mib": t.cold_mean_bytes / MiB,
                           "cold_true_mib": tr["cold_mean_bytes"] / MiB, "rate": t.rate_pct_per_min,
                           "rate_true": tr["rate_pct_per_min"]})
    k = adv.advised.rounds if adv.advised else None
    tr_k = group_truth(shapes, k, windows, n) if k else None
    return {"run": "advisor", "rounds": n, "window_s_mean": sum(windows) / n, "tlb_exact": tlb.get("tlb_exact"),
            "working_set_mib": adv.working_set_bytes / MiB, "working_set_true_mib": sum(s.total_mib for s in shapes),
            "advised_k": k, "savings_mib": adv.advised.cold_end_bytes / MiB if k else None,
            "savings_true_mib": tr_k["cold_end_bytes"] / MiB if k else None,
            "savings_mean_mib": adv.advised.cold_mean_bytes / MiB if k else None,
            "savings_mean_true_mib": tr_k["cold_mean_bytes"] / MiB if k else None,
            "thresholds": thresholds}


def run_psi_loop(args, via: str = "reclaim") -> dict:
    from sched_helpers import Schedule, Shape

    from idlemap.cgroup_reclaim import CgroupReclaimConfig, CgroupReclaimer
    from idlemap.testing.machine import cgroup
    shape = Shape(64, 0, 0, 192)
    hot, total = shape.hot_mib * 256, shape.total_mib * 256
    with cgroup("psi") as path, Schedule(shape, path) as w:
        w.loop()
        time.sleep(1)
        cfg = CgroupReclaimConfig(path=path, target_pct_per_min=5.0, psi_target_pct=args.psi_target, via=via)
        rounds = []
        with CgroupReclaimer(cfg) as eng:
            eng.start()
            for _ in range(args.loop_rounds):
                time.sleep(1.0)
                rounds.append(eng.round())
            s = eng.summary("done")
        psi_end = psi_avg10(path)
        pres = present(w.pid, w.addr, total)
    return {"run": "psi-loop" if via == "reclaim" else f"psi-loop-{via}", "via": via, "rounds": len(rounds),
            "psi_target": args.psi_target,
            "cold_reclaimed_pct": 100.0 * (1 - pres[hot:].mean()), "hot_resident_pct": 100.0 * pres[:hot].mean(),
            "psi_max": max([psi_end, s.psi_max_avg10] + [r.psi_some_avg10 for r in rounds]), "psi_end": psi_end,
            "memory_before_mib": s.memory_before_bytes / MiB, "memory_after_mib": s.memory_after_bytes / MiB,
            "reclaimed_mib": s.reclaimed_bytes / MiB, "refault_mib": s.refault_bytes / MiB, "backoffs": s.backoffs,
            "tlb_exact": s.tlb.get("tlb_exact"),
            "per_round": [(r.threshold_rounds, round(r.cold_bytes / MiB, 1), round(r.request_bytes / MiB, 1),
                           round(r.reclaimed_bytes / MiB, 1), r.psi_some_avg10, r.note) for r in rounds]}


def run_promotion(args) -> dict:
    from sched_helpers import Schedule, Shape

    from idlemap.cgroup_reclaim import CgroupReclaimConfig, CgroupReclaimer
    from idlemap.testing.machine import cgroup
    shape = Shape(32, 4, 1, 128)
    hot, warm, total = 32 * 256, 4 * 256, shape.total_mib * 256
    with cgroup("promotion") as path, Schedule(shape, path) as w:
        w.loop()
        cfg = CgroupReclaimConfig(path=path, target_pct_per_min=100.0, psi_target_pct=100.0, max_refault_pct=100.0,
                                  promotion_target_pct_per_min=0.2)
        rounds = []
        with CgroupReclaimer(cfg) as eng:
            eng.start()
            for r in range(26):
                if r % 8 == 0:
                    w.round()               # the warm set (the loop keeps the hot set)
                time.sleep(0.5)
                rounds.append(eng.round())
            s = eng.summary("done")
        pres = present(w.pid, w.addr, total)
    return {"run": "promotion", "rounds": len(rounds), "target": 0.2,
            "backoffs_at": [x.index for x in rounds if "promotion rate" in x.note],
            "floor": s.threshold_floor, "back_mib": s.back_bytes / MiB, "reclaimed_mib": s.reclaimed_bytes / MiB,
            "rate_max": s.promotion_rate_max, "hot_resident_pct": 100.0 * pres[:hot].mean(),
            "warm_resident_pct": 100.0 * pres[hot:hot + warm].mean(),
            "cold_reclaimed_pct": 100.0 * (1 - pres[hot + warm:].mean())}


def run_here(args) -> list[dict]:
    from idlemap.testing.machine import zram_swap
    use_system_test_helpers()
    rows = []
    with zram_swap():
        for fn in (run_advisor, run_psi_loop, lambda a: run_psi_loop(a, "pageout"), run_promotion):
            row = fn(args)
            print(row, flush=True)
            rows.append(row)
    return rows


# -- the table ----------------------------------------------------------------------------

def _err(m: float, t: float) -> float:
    return 100.0 * abs(m - t) / t if t else abs(m)


def table(rows: list[dict]) -> list[str]:
    by = {r["run"]: r for r in rows}
    out = ["| run | figure | truth | idlemap | error (issue's bound) |", "|---|---|---|---|---|"]
    a = by.get("advisor")
    if a:
        worst_c = max(_err(t["cold_mib"], t["cold_true_mib"]) for t in a["thresholds"])
        rated = [t for t in a["thresholds"] if t["rate_true"] > 0]
        worst_r = max(_err(t["rate"], t["rate_true"]) for t in rated) if rated else 0.0
        zero_max = max([t["rate"] for t in a["thresholds"] if t["rate_true"] == 0] or [0.0])
        out += [
            f"| advisor, 2 processes in a cgroup, {a['rounds']} rounds | working set (MiB) | "
            f"{a['working_set_true_mib']:.1f} | {a['working_set_mib']:.2f} | "
            f"{_err(a['working_set_mib'], a['working_set_true_mib']):.2f}% |",
            f"| | advised threshold (rounds) | 4 | {a['advised_k']} | |",
            f"| | advised savings now (MiB) | {a['savings_true_mib']:.1f} | {a['savings_mib']:.2f} | "
            f"{_err(a['savings_mib'], a['savings_true_mib']):.2f}% (2%) |",
            f"| | cold memory, worst threshold | | | {worst_c:.2f}% (2%) |",
            f"| | promotion rate, worst threshold with promotions | | | {worst_r:.2f}% (10%) |",
            f"| | promotion rate where the truth is 0 (%/min, max) | 0 | {zero_max:.4f} | |",
        ]
        for t in a["thresholds"][:4]:
            out.append(f"| | k = {t['k']}: cold (MiB) / rate (%/min) | {t['cold_true_mib']:.1f} / "
                       f"{t['rate_true']:.1f} | {t['cold_mib']:.2f} / {t['rate']:.1f} | |")
    for name, how in (("psi-loop", "memory.reclaim"), ("psi-loop-pageout", "MADV_PAGEOUT")):
        p = by.get(name)
        if not p:
            continue
        out += [
            f"| PSI loop via {how}, {p['rounds']} rounds of 1 s | cold set reclaimed (of 192 MiB) | 100% | "
            f"{p['cold_reclaimed_pct']:.1f}% | (>= 90%) |",
            f"| | hot set resident (of 64 MiB) | 100% | {p['hot_resident_pct']:.1f}% | |",
            f"| | PSI some avg10, max (every round and at the end) | < {p['psi_target']:g}% | {p['psi_max']:.2f}% | "
            f"({'under' if p['psi_max'] < p['psi_target'] else 'over'} the target) |",
            f"| | memory.current (MiB) | | {p['memory_before_mib']:.1f} -> {p['memory_after_mib']:.1f} | |",
            f"| | refaults (MiB) / back-offs | | {p['refault_mib']:.2f} / {p['backoffs']} | |",
        ]
    q = by.get("promotion")
    if q:
        out += [
            f"| promotion goal 0.2%/min, {q['rounds']} rounds | back-offs at rounds | | "
            f"{', '.join(map(str, q['backoffs_at'])) or 'none'} | |",
            f"| | threshold floor at the end (warm set back every 8 rounds) | > 7 | {q['floor']} | |",
            f"| | came back / reclaimed (MiB) | | {q['back_mib']:.1f} / {q['reclaimed_mib']:.1f} | |",
            f"| | resident at the end: hot / warm; cold reclaimed | | {q['hot_resident_pct']:.0f}% / "
            f"{q['warm_resident_pct']:.0f}%; {q['cold_reclaimed_pct']:.0f}% | |",
        ]
    return out


def render(res: dict, args) -> int:
    damos = getattr(args, "damos", False)
    if damos:
        from . import advise_damos
        lines, begin, end, command = advise_damos.table(res["rows"]), advise_damos.BEGIN, advise_damos.END, \
            f"{COMMAND} --damos"
    else:
        lines, begin, end, command = table(res["rows"]), BEGIN, END, COMMAND
    m = res["meta"]
    block = [begin, f"`{command}` ({m.get('kernel')}, {m.get('cpus')} CPUs, {m.get('runtime_s')} s):", "",
             *lines, end]
    if not args.no_doc:
        with open(args.doc) as f:
            text = f.read()
        if begin not in text or end not in text:
            print(f"{args.doc} has no {begin} ... {end} block", file=sys.stderr)
            return 1
        head, rest = text.split(begin, 1)
        text = head + "\n".join(block) + rest.split(end, 1)[1]
        with open(args.doc, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(args.doc, REPO)}")
    print("\n".join(lines))
    return 0


def in_vm(args) -> int:
    res = run_in_vm("advise", args, 3072)
    return res if isinstance(res, int) else render(res, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p, DOC, RESULTS)
    p.add_argument("--rounds", type=int, default=12, help="advisor: rounds (default 12)")
    p.add_argument("--settle-s", type=float, default=0.2, help="advisor: pause before each reading")
    p.add_argument("--target", type=float, default=0.2, help="advisor: promotion-rate target, %%/min")
    p.add_argument("--loop-rounds", type=int, default=16, help="psi-loop: rounds of 1 s (default 16)")
    p.add_argument("--psi-target", type=float, default=0.1, help="psi-loop and --damos: PSI target, %%")
    p.add_argument("--damos", action="store_true",
                   help="instead: idlemap's cgroup loop against DAMOS pageout with a quota and a PSI goal, in "
                        "Debian's stock 6.12 kernel (bench/advise_damos.py; results in bench/results/advise-damos.json)")
    p.add_argument("--damos-rounds", type=int, default=60, help="--damos: rounds of 1 s per method (default 60)")
    p.add_argument("--damos-base", type=int, default=8, help="--damos: baseline rounds per method (default 8)")
    args = p.parse_args(argv)
    if args.damos:
        from . import advise_damos
        if args.results == RESULTS:
            args.results = RESULTS_DAMOS
        if args.render_only:
            return elsewhere(args, render, in_vm)
        if not args.here:
            return advise_damos.in_vm(args, render)
        emit = row_writer(args)
        rows, _ = measure_here(args, lambda a: advise_damos.run_here(a, emit), f"{COMMAND} --damos",
                               schema=SCHEMA)
        print("\n".join(advise_damos.table(rows)))
        return 0
    rc = elsewhere(args, render, in_vm)
    if rc is not None:
        return rc
    rows, _ = measure_here(args, run_here, COMMAND, schema=SCHEMA)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
