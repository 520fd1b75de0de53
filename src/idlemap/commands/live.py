"""Scan-then-report, shared by the live commands (hot, heatmap).

Not a subcommand itself (it is not in cli.COMMANDS): the glue between
record.open_scanner, analysis.hotness.build_history and report.show.
"""
from __future__ import annotations


from .. import outputs
from ..analysis.hotness import build_history
from ..errors import NoSuchProcess
from ..formats.record import RecordWriter, make_meta
from ..render.progress import Progress
from ..rounds import stopped
from .record import open_scanner
from .report import check_report_options, show


def scan_and_show(kind: str, args) -> int:
    # Any backend: where only per-mapping totals exist (clear_refs), the
    # reports show mappings instead of refusing (report.show degrades).
    check_report_options(kind, args)
    sc, interval, auto = open_scanner(args)
    writer = None
    try:
        if getattr(args, "png", None):
            outputs.probe(args.png, "the PNG")   # now, not after every round is scanned
        if getattr(args, "output", None):
            writer = RecordWriter(args.output, make_meta(sc.proc, sc.backend_name, sc.granularity,
                                                         interval, args.rounds, sc.tlb_flush, auto,
                                                         guest=sc.guest))
    except BaseException:
        sc.close()
        raise
    if sc.granularity != "page" and not args.json:
        # On stdout with the report it qualifies (wss and record print theirs there too).
        print(f"Scanning with {sc.backend_name} [{sc.choice.reason}]: the report is "
              f"{'by DAMON region' if sc.granularity == 'region' else 'by mapping'}.", flush=True)
    prog = Progress(args.rounds, "round", interval_s=interval)
    rounds, exited, reason = [], None, "done"
    try:
        with sc:
            for r in sc.run(args.rounds, interval):
                rounds.append(r)
                if writer:
                    writer.add(r)
                prog.update(len(rounds))
        if stopped():                   # Ctrl-C/SIGTERM between rounds (rounds.py)
            reason = "interrupted"
    except KeyboardInterrupt:
        reason = "interrupted"          # report on the rounds gathered so far
    except NoSuchProcess as e:
        reason, exited = "target exited", e
    finally:
        prog.clear()
        if writer:
            writer.close(reason)
    if not rounds:
        if exited is not None:
            raise exited
        return 130 if reason == "interrupted" else 0
    if reason != "done" and not args.json:
        # Part of the report (what it covers); the error itself, if any, is
        # the one line on stderr at the end.
        print(f"({reason} after {len(rounds)} of {args.rounds} rounds; reporting those)", flush=True)
    h = build_history(rounds, pid=sc.proc.pid)
    del rounds
    for opt, default in (("png", None), ("rows", None), ("cols", None), ("png_rows", 320), ("color", "auto"),
                         ("min_count", None), ("max_count", None), ("min_idle", None), ("merge_gap", 0),
                         ("limit", 40), ("sort", "size"), ("top", 12)):
        if not hasattr(args, opt):
            setattr(args, opt, default)
    source = {"pid": sc.proc.pid, "comm": sc.proc.comm, "backend": sc.backend_name,
              "granularity": sc.granularity, "interval_s": interval,
              **sc.tlb.as_dict()}
    if sc.guest is not None:
        g = sc.guest
        source["vm"] = {"vmm": g.vmm, "name": g.name, "accel": g.accel, "ram_bytes": g.ram_bytes}
    rc = show(kind, h, args, source)
    if writer and not args.json:
        print(f"rounds saved to {args.output}")
    if exited is not None:
        raise exited
    return rc
