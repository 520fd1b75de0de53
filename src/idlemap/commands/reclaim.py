"""idlemap reclaim: page out (or deactivate) pages idle for N rounds."""
from __future__ import annotations

from .. import validate
from ..actions import ReclaimConfig, Reclaimer, check_target, run_rounds
from ..backends import choose_for
from ..errors import TargetExited, UsageError
from ..kernel.process import identify
from ..render import actions as ra
from ..render.text import json_line
from . import add_tlb_arguments, parse_range, pid_arg, take_pid, tlb_note

HELP = "proactive reclaim: process_madvise(MADV_PAGEOUT or MADV_COLD) on pages idle for N rounds"
EXAMPLES = """\
  idlemap reclaim 1234 --cold-for 3 --dry-run      # show what would be paged out
  idlemap reclaim 1234 --cold-for 3                # one pass: 3 idle rounds, act, watch refaults
  idlemap reclaim 1234 --cold-for 5 --period 10 --limit-mb-per-s 20   # continuously, until Ctrl-C
  idlemap reclaim 1234 --cold-for 2 --mode cold    # only deactivate: reclaim takes them first
  idlemap reclaim 1234 --cold-for 3 --range 0x7f0000000000-0x7f0040000000 --json
  idlemap reclaim --cgroup /sys/fs/cgroup/app --psi-target 0.1 --dry-run   # a cgroup, held to PSI
A round is one per-page reading (kmod or page_idle), every --period seconds (default 1).
Pages that come back hot after being reclaimed are refaults; when more than
--max-refault-pct of recent ones come back, reclaim backs off (cold-for
doubles, the rate halves) and after 3 back-offs stops.  See docs/actions.md.
"""


def add_arguments(p) -> None:
    pid_arg(p)
    p.add_argument("args", nargs="*", metavar="PID")
    p.add_argument("--cold-for", type=validate.rounds, metavar="N",
                   help="rounds a page must stay idle before it is reclaimed (required with a PID)")
    p.add_argument("--mode", choices=["pageout", "cold"], default="pageout",
                   help="pageout: reclaim now (swap out / drop); cold: deactivate only (default pageout)")
    p.add_argument("--limit-mb-per-s", type=validate.number(0, 1 << 40, "MiB per second"), metavar="R",
                   help="advise at most R MiB per second (R x period per round)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--period", type=validate.interval, metavar="S",
                   help="run continuously, one round every S seconds, until Ctrl-C/SIGTERM")
    p.add_argument("--count", type=validate.count, metavar="N",
                   help="stop after N rounds (default without --period: --cold-for + 3, or --cold-for with "
                        "--dry-run; with --cgroup: 30)")
    p.add_argument("--max-refault-pct", type=validate.percent, default=5.0, metavar="P",
                   help="back off when more than P%% of recently reclaimed pages come back (default 5)")
    p.add_argument("--range", action="append", default=[], metavar="START-END",
                   help="only this VA range (repeatable; default: every mapping)")
    p.add_argument("--plan", action="store_true", help="print each round's ranges (always with --dry-run)")
    p.add_argument("--force", action="store_true", help="allow PID 1")
    p.add_argument("--json", action="store_true", help=f"JSON lines ({ra.RECLAIM_ROUND_SCHEMA}, "
                   f"{ra.RECLAIM_SUMMARY_SCHEMA})")
    add_tlb_arguments(p, acting=True)
    from .reclaim_cgroup import add_cgroup_arguments
    add_cgroup_arguments(p)


def config(args) -> ReclaimConfig:
    if args.cold_for is None:
        raise UsageError("--cold-for N is required: rounds a page must stay idle (or --cgroup PATH)")
    if args.cold_for < 1:
        raise UsageError("--cold-for must be at least 1 round")
    if args.period is not None and args.period <= 0:
        raise UsageError("--period must be positive seconds")
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.limit_mb_per_s is not None and args.limit_mb_per_s <= 0:
        raise UsageError("--limit-mb-per-s must be positive")
    if not 0 <= args.max_refault_pct <= 100:
        raise UsageError("--max-refault-pct must be between 0 and 100")
    return ReclaimConfig(
        cold_for=args.cold_for, mode=args.mode,
        rate_bytes_per_s=None if args.limit_mb_per_s is None else args.limit_mb_per_s * (1 << 20),
        period_s=args.period or 1.0, dry_run=args.dry_run,
        ranges=[parse_range(r) for r in args.range] or None,
        refault_pct=args.max_refault_pct, tlb_flush=args.tlb_flush,
        unsafe_no_tlb_flush=args.unsafe_no_tlb_flush)


def run(args) -> int:
    if args.cgroup is not None:
        from .reclaim_cgroup import run as run_cgroup
        return run_cgroup(args)
    if args.promotion_target is not None:
        raise UsageError("--promotion-target goes with --cgroup (reclaim PID backs off on its own refaults)")
    if args.via is not None:
        raise UsageError("--via goes with --cgroup (reclaim PID always writes process_madvise; see --mode)")
    pid, rest = take_pid(args, args.args)
    if rest:
        raise UsageError("too many arguments: idlemap reclaim PID --cold-for N")
    cfg = config(args)
    proc = identify(pid)
    check_target(proc, args.force, "reclaim")
    choose_for("auto", pid, need_per_page=True)     # per page, or one sentence why not, before anything
    count = args.count
    if count is None and args.period is None:
        count = cfg.cold_for if cfg.dry_run else cfg.cold_for + 3
    with Reclaimer(proc, cfg) as eng:
        tlb_note(eng.rounds.tlb, args.json)     # the --unsafe-no-tlb-flush warning
        table = ra.reclaim_table(dry_run=cfg.dry_run)
        if not args.json:
            rate = "" if cfg.rate_bytes_per_s is None else f", at most {args.limit_mb_per_s:g} MiB/s"
            # A dry run advises nothing, but its readings still mark pages
            # idle and flush the TLB (docs/actions.md, Safety): say so.
            print(f"{'Dry run, nothing is paged out (the readings still mark pages idle): ' if cfg.dry_run else ''}"
                  f"PID {pid} ({proc.comm}): "
                  f"MADV_{cfg.mode.upper()} on pages idle for {cfg.cold_for} rounds of {cfg.period_s:g} s"
                  f"{rate}; {'until Ctrl-C' if count is None else f'{count} rounds'}.")
            table.header()

        def emit(r) -> None:
            if args.json:
                json_line(ra.reclaim_round_json(r, args.plan or cfg.dry_run))
                return
            ra.reclaim_row(table, r)
            if args.plan or cfg.dry_run:
                for line in ra.reclaim_plan(r, cfg.mode):
                    print(line)

        reason = run_rounds(eng, cfg.period_s, count, emit, done=lambda r: eng.guard.stopped)
        s = eng.summary(reason)
    if args.json:
        json_line(ra.reclaim_summary_json(s))
    else:
        print()
        for line in ra.reclaim_summary_lines(s):
            print(line)
    if eng.gone:
        # Like every command: what was gathered is printed, then one sentence
        # and a non-zero exit.
        raise TargetExited(pid)
    return 0
