"""idlemap reclaim --cgroup PATH: the cgroup half of `reclaim` (not a
subcommand of its own; commands/reclaim.py hands over to :func:`run`).

The loop is idlemap.cgroup_reclaim.CgroupReclaimer; this module parses
its options and prints its rounds (docs/advise.md).
"""
from __future__ import annotations

import sys

from .. import validate
from ..errors import UsageError
from ..render.text import Table, json_line
from ..render.units import human_bytes

MiB = 1 << 20
DEFAULT_STEP_MIB = 64
DEFAULT_COUNT = 30


def add_cgroup_arguments(p) -> None:
    from .advise import add_target_option, target_arg
    g = p.add_argument_group("a whole cgroup (--cgroup: MADV_PAGEOUT of its cold pages or memory.reclaim, held to a PSI target)")
    g.add_argument("--cgroup", metavar="PATH",
                   help="reclaim from this cgroup v2 group (e.g. /sys/fs/cgroup/app or /app) instead of a PID: "
                        "sized by the advisor's cold bytes, held to --psi-target; --cold-for is then the "
                        "smallest threshold (default 2)")
    g.add_argument("--psi-target", type=validate.percent, default=0.1, metavar="PCT",
                   help="--cgroup: back off while memory.pressure 'some avg10' is at or above PCT%% (default 0.1)")
    add_target_option(g)
    g.add_argument("--via", choices=["pageout", "reclaim"], default=None,
                   help="--cgroup: how each request is written: pageout -- process_madvise(MADV_PAGEOUT) of "
                        "exactly the pages read cold and charged to the cgroup (default: only these pages were "
                        "read with a TLB flush); reclaim -- memory.reclaim, the kernel's LRU picks the pages by "
                        "its own unflushed aging, which can take a busy loop's hot pages")
    g.add_argument("--promotion-target", type=target_arg, default=None, metavar="RATE",
                   help="--cgroup: back off, and raise the threshold, while the pages the loop reclaimed come "
                        "back faster than RATE (percent of the working set per minute over the last 5 rounds, "
                        "e.g. 0.2%%/min; default: no such goal)")


def _check(args) -> None:
    if args.pid_opt is not None or args.args:
        raise UsageError("give a PID or --cgroup PATH, not both")
    if args.mode != "pageout":
        raise UsageError("--mode cold is per process (MADV_COLD); --cgroup always pages out")
    if args.range:
        raise UsageError("--range is per process; --cgroup reclaims from the whole cgroup")
    if args.plan:
        raise UsageError("--plan lists one process's ranges; with --cgroup use --dry-run to see the plan")


def run(args) -> int:
    from ..cgroup_reclaim import CgroupReclaimConfig, CgroupReclaimer
    from ..actions import run_rounds
    _check(args)
    period = args.period or 1.0
    step = (DEFAULT_STEP_MIB * MiB if args.limit_mb_per_s is None
            else max(MiB, int(args.limit_mb_per_s * MiB * period)))
    cfg = CgroupReclaimConfig(path=args.cgroup, target_pct_per_min=args.target_rate, psi_target_pct=args.psi_target,
                              min_cold_for=args.cold_for or 2, max_step_bytes=step,
                              max_refault_pct=args.max_refault_pct, period_s=period, dry_run=args.dry_run,
                              tlb_flush=args.tlb_flush, unsafe_no_tlb_flush=args.unsafe_no_tlb_flush,
                              promotion_target_pct_per_min=args.promotion_target, via=args.via or CgroupReclaimConfig.via)
    count = args.count if args.count is not None else (None if args.period is not None else DEFAULT_COUNT)
    with CgroupReclaimer(cfg) as eng:
        if args.unsafe_no_tlb_flush:
            print("idlemap: warning: --unsafe-no-tlb-flush: readings may call TLB-cached hot pages idle "
                  "and size reclaim from them", file=sys.stderr, flush=True)
        table = Table([("ROUND", 5), ("PROCS", 5), ("MEM(MiB)", 9), ("T(rounds)", 9), ("COLD(MiB)", 9),
                       ("PSI(%)", 7), ("REFAULT(MiB)", 12), ("PLAN(MiB)" if cfg.dry_run else "ASK(MiB)", 9),
                       ("RECLAIMED(MiB)", 14), ("BACK(MiB)", 9), ("PROMO(%/min)", 12), ("NOTE", -1)])
        if not args.json:
            how = "memory.reclaim" if cfg.via == "reclaim" else "MADV_PAGEOUT"
            print(f"{'Dry run, nothing will change: ' if cfg.dry_run else ''}cgroup {eng.path}: {how} "
                  f"of memory idle at the advised threshold (target {cfg.target_pct_per_min:g}%/min, at least "
                  f"{cfg.min_cold_for} rounds of {period:g} s) with {eng.scan.backend_name}, at most "
                  f"{human_bytes(step)} per round (from {human_bytes(min(step, cfg.first_step_bytes))}, "
                  f"doubling after each calm round), while "
                  f"PSI some avg10 < {cfg.psi_target_pct:g}%"
                  + ("" if cfg.promotion_target_pct_per_min is None else
                     f" and what it reclaimed comes back at < {cfg.promotion_target_pct_per_min:g}%/min")
                  + f"; {'until Ctrl-C' if count is None else f'{count} rounds'}.")
            table.header()

        def emit(r) -> None:
            if args.json:
                json_line(r.as_dict())
                return
            table.row([r.index, r.procs, f"{r.memory_bytes / MiB:.1f}",
                       "-" if r.threshold_rounds is None else r.threshold_rounds, f"{r.cold_bytes / MiB:.1f}",
                       f"{r.psi_some_avg10:.2f}", f"{r.refault_bytes / MiB:.1f}", f"{r.request_bytes / MiB:.1f}",
                       f"{r.reclaimed_bytes / MiB:.1f}", f"{r.back_bytes / MiB:.1f}",
                       f"{r.promotion_rate_pct_per_min:.3f}", r.note])

        reason = run_rounds(eng, period, count, emit, done=lambda r: bool(eng.stopped))
        s = eng.summary(reason)
    if args.json:
        json_line(s.as_dict())
        return 0
    print()
    print(f"cgroup {s.path}: {s.rounds} rounds; memory {human_bytes(s.memory_before_bytes)} -> "
          f"{human_bytes(s.memory_after_bytes)}; asked {human_bytes(s.requested_bytes)}"
          f"{' (dry run: nothing written)' if s.dry_run else ''}, reclaimed {human_bytes(s.reclaimed_bytes)}, "
          f"refaults {human_bytes(s.refault_bytes)}; PSI some avg10 max {s.psi_max_avg10:g}%; "
          f"back-offs {s.backoffs}; ended: {s.stop_reason}")
    print(f"reclaimed pages that came back: {human_bytes(s.back_bytes)} (promotion rate at most "
          f"{s.promotion_rate_max:.3f}%/min over 5 rounds); threshold floor {s.threshold_floor} rounds")
    if s.advice:
        print(f"advised threshold at the end: {s.advice['rounds']} rounds "
              f"({human_bytes(s.advice['cold_mean_bytes'])} cold on average, "
              f"{s.advice['rate_pct_per_min']:.4f}%/min promoted)")
    return 0
