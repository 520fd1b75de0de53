"""idlemap tier: hot pages to the fast NUMA node, cold pages to the slow one."""
from __future__ import annotations

from .. import validate
from ..actions import TierConfig, Tierer, check_target, run_rounds
from ..backends import choose_for
from ..errors import TargetExited, UsageError
from ..kernel.process import identify
from ..render import actions as ra
from ..render.text import json_line
from . import add_tlb_arguments, parse_range, pid_arg, take_pid, tlb_note

HELP = "NUMA tiering: move_pages hot pages to the fast node and cold pages to the slow node"
EXAMPLES = """\
  idlemap tier 1234 --fast 0 --slow 1 --dry-run     # show what would move, change nothing
  idlemap tier 1234 --fast 0 --slow 1               # one pass: act until placement settles
  idlemap tier 1234 --fast 0 --slow 1 --hot-rounds 2 --cold-rounds 5 \\
                    --max-mb-per-period 64 --period 5   # continuously, until Ctrl-C
  idlemap tier 1234 --fast 0 --slow 1 --json
  idlemap tier 1234 --fast 0 --slow 1 --fast-capacity 2G   # the hottest 2 GiB on node 0, the rest on 1
  idlemap tier 1234 --fast 0 --slow 1 --fast-ratio 0.25    # the hottest quarter of its memory on node 0
Hot = accessed in each of the last H rounds; cold = idle in each of the last
C rounds.  Pages in between stay where they are (the anti-thrash gap), and a
page that moved rests max(H, C) rounds before it may move again.
With --fast-capacity or --fast-ratio (memtierd's ratio policy) every page is
ranked by heat instead -- idle age, then rounds accessed in a row, then
rounds accessed -- and the hottest that fit stay on (or move to) the fast
node, the rest go to the slow one; the target never holds more than the
capacity there because of a move.  Pages that cannot move are reported by
move_pages status (-EBUSY, -ENOMEM, -EACCES, ...).  See docs/actions.md.
"""


def add_arguments(p) -> None:
    pid_arg(p)
    p.add_argument("args", nargs="*", metavar="PID")
    p.add_argument("--fast", type=validate.whole(0, 1023, "a NUMA node number"), required=True, metavar="NODE", help="NUMA node for hot pages")
    p.add_argument("--slow", type=validate.whole(0, 1023, "a NUMA node number"), required=True, metavar="NODE", help="NUMA node for cold pages")
    p.add_argument("--hot-rounds", type=validate.rounds, default=2, metavar="H",
                   help="hot: accessed in each of the last H rounds (default 2)")
    p.add_argument("--cold-rounds", type=validate.rounds, default=3, metavar="C",
                   help="cold: idle in each of the last C rounds (default 3)")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--fast-capacity", type=validate.size(0, 1 << 50, "a capacity"), metavar="SIZE",
                     help="capacity policy: keep the hottest SIZE bytes (e.g. 2G) of the target on --fast, "
                          "the rest on --slow (--hot-rounds/--cold-rounds then do not apply)")
    cap.add_argument("--fast-ratio", type=validate.number(0, 1, "a share of the target's memory"), metavar="R",
                     help="capacity policy: keep the hottest share R (0 < R <= 1) of the target's pages on "
                          "the two nodes on --fast, the rest on --slow")
    p.add_argument("--max-mb-per-period", type=validate.number(0, 1 << 40, "MiB"), metavar="M",
                   help="move at most M MiB per round (default: no cap)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    p.add_argument("--period", type=validate.interval, metavar="S",
                   help="run continuously, one round every S seconds, until Ctrl-C/SIGTERM")
    p.add_argument("--count", type=validate.count, metavar="N",
                   help="stop after N rounds (default without --period: when nothing is left to move)")
    p.add_argument("--range", action="append", default=[], metavar="START-END",
                   help="only this VA range (repeatable; default: every mapping)")
    p.add_argument("--plan", action="store_true", help="print each round's ranges (always with --dry-run)")
    p.add_argument("--force", action="store_true", help="allow PID 1")
    p.add_argument("--json", action="store_true", help=f"JSON lines ({ra.TIER_ROUND_SCHEMA}, "
                   f"{ra.TIER_SUMMARY_SCHEMA})")
    add_tlb_arguments(p, acting=True)


def config(args) -> TierConfig:
    if args.period is not None and args.period <= 0:
        raise UsageError("--period must be positive seconds")
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.max_mb_per_period is not None and args.max_mb_per_period <= 0:
        raise UsageError("--max-mb-per-period must be positive")
    if args.hot_rounds < 1 or args.cold_rounds < 1:
        raise UsageError("--hot-rounds and --cold-rounds must be at least 1")
    if args.fast == args.slow:
        raise UsageError("--fast and --slow must be different nodes")
    return TierConfig(
        fast=args.fast, slow=args.slow, hot_rounds=args.hot_rounds, cold_rounds=args.cold_rounds,
        cap_bytes=None if args.max_mb_per_period is None else int(args.max_mb_per_period * (1 << 20)),
        period_s=args.period or 1.0, dry_run=args.dry_run,
        ranges=[parse_range(r) for r in args.range] or None, tlb_flush=args.tlb_flush,
        unsafe_no_tlb_flush=args.unsafe_no_tlb_flush, fast_capacity_bytes=args.fast_capacity,
        fast_ratio=args.fast_ratio)


def run(args) -> int:
    pid, rest = take_pid(args, args.args)
    if rest:
        raise UsageError("too many arguments: idlemap tier PID --fast NODE --slow NODE")
    cfg = config(args)
    proc = identify(pid)
    check_target(proc, args.force, "move")
    choose_for("auto", pid, need_per_page=True)     # per page, or one sentence why not, before anything
    ready = cfg.first_plan_round                     # first round that can plan anything

    def settled(r) -> bool:
        # One pass ends when placement settles: a round that could plan
        # moves planned none (a dry run plans the same each round: once).
        if args.period is not None or args.count is not None or r.round < ready:
            return False
        return cfg.dry_run or (r.promote_pages + r.demote_pages == 0)

    with Tierer(proc, cfg) as eng:
        tlb_note(eng.rounds.tlb, args.json)     # the --unsafe-no-tlb-flush warning
        table = ra.tier_table(dry_run=cfg.dry_run)
        if not args.json:
            cap = "" if cfg.cap_bytes is None else f", at most {args.max_mb_per_period:g} MiB per round"
            if cfg.fast_ratio is not None:
                policy = (f"the hottest {cfg.fast_ratio:g} of its pages -> node {cfg.fast}, the rest -> node "
                          f"{cfg.slow}")
            elif cfg.fast_capacity_bytes is not None:
                policy = (f"the hottest {cfg.fast_capacity_bytes / (1 << 20):g} MiB -> node {cfg.fast}, the rest "
                          f"-> node {cfg.slow}")
            else:
                policy = (f"hot (accessed {cfg.hot_rounds} rounds running) -> node {cfg.fast}, cold (idle "
                          f"{cfg.cold_rounds} rounds running) -> node {cfg.slow}")
            print(f"{'Dry run, nothing will move (the readings still mark pages idle): ' if cfg.dry_run else ''}"
                  f"PID {pid} ({proc.comm}): {policy}, rounds of {cfg.period_s:g} s{cap}.")
            table.header()

        def emit(r) -> None:
            if args.json:
                json_line(ra.tier_round_json(r, args.plan or cfg.dry_run))
                return
            ra.tier_row(table, r)
            if args.plan or cfg.dry_run:
                for line in ra.tier_plan_lines(r, cfg.fast, cfg.slow):
                    print(line)

        reason = run_rounds(eng, cfg.period_s, args.count, emit, done=settled)
        if reason == "done":
            reason = "plan shown" if cfg.dry_run else "placement settled"
        s = eng.summary(reason)
    if args.json:
        json_line(ra.tier_summary_json(s))
    else:
        print()
        for line in ra.tier_summary_lines(s):
            print(line)
    if eng.gone:
        # Like every command: what was gathered is printed, then one sentence
        # and a non-zero exit.
        raise TargetExited(pid)
    return 0
