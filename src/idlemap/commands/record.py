"""idlemap record: scan rounds of a process into a record file."""
from __future__ import annotations

import os
import sys
import time

from .. import backends, outputs, rounds, validate
from ..errors import NoSuchProcess, UsageError
from ..formats.record import RecordWriter, make_meta
from ..render.progress import Progress
from ..render.text import json_line
from ..render.units import human_bytes
from ..scan import Scanner, calibrate
from . import (add_damon_arguments, add_tlb_arguments, damon_kwargs, parse_range, pid_arg, take_pid, tlb_note,
               windows)
from . import BACKEND_HELP, qmp_needs_vm, user_target

HELP = "record rounds of a process's page accesses to a file, for `idlemap report`"
EXAMPLES = """\
  idlemap record 1234                       # 1 s rounds until Ctrl-C, to idlemap-1234.rec
  idlemap record 1234 0.5 120 -o app.rec   # 120 rounds of 0.5 s (or: -p 1234 -i 0.5 -n 120)
  idlemap record 1234 -n 60 --auto-interval # pick the interval first (rule: docs/reports.md)
  idlemap record 1234 --range 0x7f0000000000-0x7f0040000000   # only that VA range
  idlemap record 1234 --backend clear_refs  # no page_idle: per-mapping totals (every report, by mapping)
  idlemap record --vm 4321 -n 60            # a VMM: its guest's RAM by guest-physical address
Ctrl-C or SIGTERM stops recording; every finished round is already in the
file (each round is appended whole and synced), and a killed recorder leaves
a file that reads back with all of its finished rounds.
"""
SCHEMA = "idlemap.record.round/1"
SUMMARY_SCHEMA = "idlemap.record.summary/1"
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 30.0     # --auto-interval's default bounds


def add_scan_arguments(p, default_rounds: int | None, backend_help: str = BACKEND_HELP) -> None:
    pid_arg(p)
    p.add_argument("args", nargs="*", metavar="PID [interval [count]]",
                   help="target process (or -p PID), round length in seconds (default 1), number of "
                        "rounds (default: " + (str(default_rounds) if default_rounds else "until Ctrl-C") + ")")
    p.add_argument("-i", "--interval", type=validate.interval, metavar="S",
                   help="the round length, as an option (the same as the positional interval)")
    p.add_argument("-n", "--rounds", type=validate.rounds, metavar="N",
                   help="the number of rounds, as an option (the same as the positional count)")
    p.set_defaults(default_rounds=default_rounds)
    p.add_argument("--auto-interval", action="store_true",
                   help="choose the interval first: the shortest window whose working set a window "
                        "twice as long would grow by < 25%% (docs/reports.md)")
    p.add_argument("--min-interval", type=validate.interval, metavar="S",
                   help=f"with --auto-interval: shortest window tried (default {MIN_INTERVAL_S:g})")
    p.add_argument("--max-interval", type=validate.interval, metavar="S",
                   help=f"with --auto-interval: longest window tried (default {MAX_INTERVAL_S:g})")
    p.add_argument("--backend", default="auto", choices=["auto", *backends.BACKENDS],
                   help=backend_help)
    add_tlb_arguments(p)
    p.add_argument("--range", action="append", default=[], metavar="LO-HI", dest="scan_range",
                   help="only scan this VA range (repeatable; a per-page backend: kmod or page_idle; "
                        "with --vm a guest-physical range)")
    p.add_argument("--vm", action="store_true",
                   help="PID is a VMM (QEMU, Firecracker...): scan its guest RAM, in guest-physical terms")
    p.add_argument("--qmp", metavar="SOCKET", help="with --vm: QEMU's QMP socket, for the exact layout")
    add_damon_arguments(p)


def add_arguments(p) -> None:
    add_scan_arguments(p, None)
    p.add_argument("-o", "--output", metavar="FILE", type=outputs.arg("the record"),
                   help="record file (default idlemap-PID.rec; an existing record is kept as FILE.1, "
                   "then FILE.2 ...; a device, FIFO, symlink or directory is refused)")
    p.add_argument("--json", action="store_true",
                   help=f"a JSON line per round written (schema {SCHEMA}) and a summary line")
    p.add_argument("--no-sync", action="store_true",
                   help="do not fdatasync after each round (survives a killed recorder, "
                        "not a power cut)")
    p.add_argument("--pss", action="store_true", help="page_idle: also read PSS each round (smaps_rollup)")


def check_scan_options(args, rest: list) -> None:
    """Refuse options that would be ignored or contradict each other, before
    the target or any backend is asked (advise calls it before its own
    backend check).  ``rest``: the positionals after the PID.  No side effects."""
    qmp_needs_vm(args)
    if args.auto_interval:
        if rest or args.interval is not None:
            raise UsageError("--auto-interval chooses the interval itself: give no interval with it "
                             "(neither -i nor the positional one; bound it with --min-interval/--max-interval)")
        lo = MIN_INTERVAL_S if args.min_interval is None else args.min_interval
        hi = MAX_INTERVAL_S if args.max_interval is None else args.max_interval
        if lo > hi:
            raise UsageError(f"--min-interval ({lo:g} s) must not exceed --max-interval ({hi:g} s)")
    else:
        given = [o for o, v in (("--min-interval", args.min_interval), ("--max-interval", args.max_interval))
                 if v is not None]
        if given:
            raise UsageError(f"{given[0]} bounds --auto-interval's search: it goes with --auto-interval")


def open_scanner(args, need_per_page: bool = False, with_pss: bool = False) -> tuple[Scanner, float, dict | None]:
    """Validate the scan options, identify the target, build the scanner and
    settle the interval (running the --auto-interval calibration if asked)."""
    pid, rest = take_pid(args, args.args)
    check_scan_options(args, rest)
    # One grammar (commands.windows): the resolved values replace the
    # options' own, so what follows reads args.interval and args.rounds.
    args.interval, args.rounds = windows(rest, 1.0, args.default_rounds, args.interval, args.rounds)
    if args.auto_interval:
        if args.min_interval is None:
            args.min_interval = MIN_INTERVAL_S
        if args.max_interval is None:
            args.max_interval = MAX_INTERVAL_S
    ranges = [parse_range(r) for r in args.scan_range] or None
    damon_kw = damon_kwargs(args, args.backend)     # "auto" never picks damon
    proc = user_target(pid)
    guest = None
    if args.vm:
        from ..vm import describe, find_guest_ram, restrict
        guest = restrict(find_guest_ram(describe(pid), args.qmp), ranges)
        ranges = None
    sc = Scanner(proc, backend=args.backend, need_per_page=need_per_page, tlb_flush=args.tlb_flush,
                 ranges=ranges, with_pss=with_pss, guest=guest,
                 backend_kw=damon_kw)
    tlb_note(sc.tlb, getattr(args, "json", False))
    if guest is not None and not getattr(args, "json", False):
        from ..vm import layout_summary
        print(f"PID {pid} is a VM: {layout_summary(guest)}; addresses below are guest-physical.",
              file=sys.stderr, flush=True)
    interval, auto = args.interval, None
    if args.auto_interval:
        if sys.stderr.isatty():
            print(f"choosing the interval (windows of {args.min_interval:g} s doubling up to "
                  f"{args.max_interval:g} s)...", file=sys.stderr, flush=True)
        try:
            cal = calibrate(sc, args.min_interval, args.max_interval)
        except BaseException:
            sc.close()
            raise
        interval, auto = cal.interval_s, cal.as_dict()
        steps = ", ".join(f"{w:g} s: {100 * f:.1f}%" for w, f in cal.steps)
        print(f"--auto-interval chose {interval:g} s ({cal.reason}; accessed share of RSS by window: {steps})",
              file=sys.stderr, flush=True)
    return sc, interval, auto


def run(args) -> int:
    sc, interval, auto = open_scanner(args, with_pss=args.pss)
    path = args.output or f"idlemap-{sc.proc.pid}.rec"
    meta = make_meta(sc.proc, sc.backend_name, sc.granularity, interval, args.rounds,
                     sc.tlb_flush, auto, guest=sc.guest)
    try:
        writer = RecordWriter(path, meta, fsync=not args.no_sync)
    except BaseException:
        sc.close()
        raise
    if not args.json:
        what = {"page": "per page", "region": "per DAMON region"}.get(
            sc.granularity, "per mapping (totals only: every report by mapping)")
        n = f"{args.rounds} rounds" if args.rounds else "rounds"
        print(f"Recording PID {sc.proc.pid} ({sc.proc.comm}) with {sc.backend_name} [{sc.choice.reason}], "
              f"{what}: {n} of {interval:g} s to {path}. Ctrl-C to stop.", flush=True)
    prog = Progress(args.rounds, "round", interval_s=interval)
    t0 = time.monotonic()
    reason, exited = "done", None
    try:
        with sc:
            for r in sc.run(args.rounds, interval):
                nbytes = writer.add(r)
                if args.json:
                    json_line({"schema": SCHEMA, "round": r.index, "frame_bytes": nbytes,
                               "file_bytes": writer.size_bytes, "window_s": round(r.sample.window_s, 6),
                               "rss_bytes": r.sample.rss_bytes, "wss_bytes": r.accessed_bytes})
                prog.update(writer.rounds, f"{human_bytes(writer.size_bytes)} written")
        if rounds.stopped():            # Ctrl-C/SIGTERM between rounds (rounds.py)
            reason = "interrupted"
    except KeyboardInterrupt:
        reason = "interrupted"
    except NoSuchProcess as e:
        reason, exited = "target exited", e
    except BaseException as e:
        reason = f"stopped: {e}"
        raise
    finally:
        prog.clear()
        writer.close(reason)
    elapsed = time.monotonic() - t0
    size = os.path.getsize(path)
    per = (size / writer.rounds) if writer.rounds else 0
    if args.json:
        json_line({"schema": SUMMARY_SCHEMA, "file": path, "rounds": writer.rounds, "file_bytes": size,
                   "elapsed_s": round(elapsed, 3), "end_reason": reason})
    else:
        print(f"{writer.rounds} rounds in {elapsed:.1f} s written to {path} "
              f"({human_bytes(size)}, {human_bytes(per)} per round); ended: {reason}. "
              f"Next: idlemap report {path} wss|hot|cold|histogram|heatmap|advise|info")
    if exited is not None:
        raise exited
    return 0
