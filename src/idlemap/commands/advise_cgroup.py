"""idlemap advise --cgroup PATH: the savings advice of a whole cgroup (not
a subcommand of its own; commands/advise.py hands over to :func:`run`).

Every process of the group (and of the groups below it) is scanned per
page each round (idlemap.cgroup_scan.CgroupScan, the same sums the
``reclaim --cgroup`` loop sizes its requests by); the group's cold bytes and
promotions per threshold are the sums of its processes', and each process
also gets its own figures at the group's advised threshold.
"""
from __future__ import annotations

import json
import sys

from ..analysis import advise as A
from ..errors import UsageError
from ..render.units import human_bytes
from .advise import SCHEMA, advice_png, print_advice

MiB = 1 << 20


def _check(args) -> None:
    if args.pid_opt is not None:
        raise UsageError("give a PID or --cgroup PATH, not both")
    if args.vm or args.qmp:
        raise UsageError("--vm is for one VMM; --cgroup scans every process of a cgroup")
    if args.scan_range:
        raise UsageError("--range is per process; --cgroup scans the whole address space of each process")
    if getattr(args, "output", None):
        raise UsageError("-o records one process; --cgroup has no record format yet")
    if args.auto_interval or args.min_interval is not None or args.max_interval is not None:
        raise UsageError("--auto-interval (with its --min-interval/--max-interval) calibrates one process; "
                         "give -i with --cgroup")


def process_rows(scan, adv: A.Advice, target: float) -> list[dict]:
    """Each member at the group's advised threshold (its own rounds may be
    fewer: a process that joined late has no figure at a longer threshold)."""
    k = None if adv.advised is None else adv.advised.rounds
    rows = []
    for m in scan.members.values():
        own = m.acc.advice(target)
        t = next((x for x in own.thresholds if x.rounds == k), None) if k is not None else None
        rows.append({"pid": m.pid, "comm": m.comm, "rounds": own.rounds, "working_set_bytes": own.working_set_bytes,
                     "advised_rounds": None if own.advised is None else own.advised.rounds,
                     "at_group_threshold": None if t is None else t.as_dict()})
    rows.sort(key=lambda r: -r["working_set_bytes"])
    return rows


def run(args) -> int:
    from .. import rounds
    from ..cgroup_scan import CgroupScan
    from ..kernel import cgroup as cg
    from . import windows
    _check(args)
    interval, count = windows(list(args.args), 1.0, args.default_rounds, args.interval, args.rounds,
                              usage="--cgroup PATH [interval [count]]")
    path = cg.resolve(args.cgroup)
    if path.rstrip("/") in {m.rstrip("/") for m in cg.cgroup2_mounts()}:
        raise UsageError(f"{args.cgroup} is the root cgroup (every process): give a group below it, or use "
                         "`idlemap top` for the whole system")
    target = args.target_rate
    kmax = max(1, count)
    # The backend (--backend: auto, kmod or page_idle) is chosen, or refused
    # in one sentence, before any process is touched.
    scan = CgroupScan(path, kmax, args.tlb_flush, backend=args.backend)
    reason = "done"
    try:
        scan.start()
        if not args.json:
            print(f"scanning cgroup {path} with {scan.backend_name} [{scan.choice.reason}]: "
                  f"{len(scan.members)} processes, {count} rounds of {interval:g} s...", file=sys.stderr, flush=True)

        def step():
            g = scan.round()
            scan.sync()
            return g

        try:
            for _ in rounds.paced(step, interval, count):
                pass
            if rounds.stopped():
                reason = "interrupted"
        except KeyboardInterrupt:
            reason = "interrupted"
        adv = scan.acc.advice(target, interval)
        procs = process_rows(scan, adv, target)
        tlb = scan.tlb
    finally:
        scan.close()
    if reason != "done" and not args.json:
        print(f"({reason} after {adv.rounds} of {count} rounds; reporting those)", file=sys.stderr)
    who = f"cgroup {path} ({len(procs)} processes)"
    if args.png:
        advice_png(adv, args.png, f"{who}: memory idle >= T against its promotion rate")
    if args.json:
        source = {"cgroup": path, "backend": scan.backend_name, "granularity": "page", "interval_s": interval,
                  "processes": len(procs), **tlb}
        print(json.dumps({"schema": SCHEMA, "source": source, "granularity": "page", **adv.as_dict(),
                          "processes": procs, **({"png": args.png} if args.png else {})}))
        return 0
    print_advice(adv, who)
    if procs:
        print()
        k = "-" if adv.advised is None else f"T = {adv.advised.rounds} rounds"
        print(f"per process, at the group's threshold ({k}):")
        print(f"{'PID':>8} {'COMM':<16} {'WS(MiB)':>9} {'COLD(MiB)':>10} {'RATE(%/min)':>11} {'OWN_T':>6}")
        for r in procs:
            t = r["at_group_threshold"]
            cold = "-" if t is None else f"{t['cold_mean_bytes'] / MiB:.2f}"
            rate = "-" if t is None else f"{t['rate_pct_per_min']:.4f}"
            own = "-" if r["advised_rounds"] is None else r["advised_rounds"]
            print(f"{r['pid']:>8} {r['comm'][:16]:<16} {r['working_set_bytes'] / MiB:>9.2f} {cold:>10} {rate:>11} "
                  f"{own:>6}")
    else:
        print(f"no process in {path} during the scan: nothing to advise")
    if args.png:
        print(f"wrote {args.png}")
    if adv.advised is not None:
        print(f"(the group could give up {human_bytes(adv.advised.cold_end_bytes)} now at that threshold; "
              f"`idlemap reclaim --cgroup {args.cgroup}` does it through memory.reclaim)")
    return 0
