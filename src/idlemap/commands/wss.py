"""idlemap wss: working-set size over time, like Gregg's wss."""
from __future__ import annotations

import time

from .. import backends, rounds, validate
from ..analysis.wss import profile_windows, summarize, top_mappings
from ..errors import NoSuchProcess, TargetExited, UsageError
from ..render.text import MB, Table, json_line, mb
from . import (add_damon_arguments, add_tlb_arguments, damon_kwargs, pid_arg, take_pid, tlb_note, tlb_policy,
               windows)
from . import BACKEND_HELP, qmp_needs_vm, user_target

HELP = "working-set size of a process: Est(s), RSS, PSS and referenced MiB per window"
EXAMPLES = """\
  idlemap wss 1234                 # one row per second until Ctrl-C
  idlemap wss -p 1234 0.5 10       # ten 0.5 s windows
  idlemap wss 1234 1 5 -C          # cumulative: how the set grows from one start
  idlemap wss 1234 -P 10           # profile: windows of 0.01, 0.02, ... 5.12 s
  idlemap wss 1234 1 3 --by-mapping --json   # JSON lines, per mapping
  idlemap wss 1234 --backend clear_refs      # no page_idle? exact per-mapping totals
  idlemap wss 1234 5 --backend damon --damon-regions 10-1000   # DAMON regions, its default bounds
  idlemap wss --vm 1234 1 10       # PID is a VMM: the guest's WSS, rows by guest RAM region
"""
# /2: the accessed bytes are "wss_bytes" (one name for one figure across
# commands and the exporter, docs/json.md); /1's "ref_*" keys are kept as
# deprecated aliases for one version.
SCHEMA = "idlemap.wss/2"
SUMMARY_SCHEMA = "idlemap.wss.summary/2"
PROFILE_BASE_S = 0.01


def add_arguments(p) -> None:
    pid_arg(p)
    p.add_argument("args", nargs="*", metavar="PID [interval [count]]",
                   help="target PID, window length in seconds (default 1), number of windows (default: until Ctrl-C)")
    p.add_argument("-C", "--cumulative", action="store_true",
                   help="mark once; each row shows everything referenced since the start")
    p.add_argument("-P", "--profile", type=validate.whole(1, 32, "a number of profile windows"), metavar="N",
                   help="profile: N windows of power-of-two lengths from --profile-base")
    p.add_argument("--profile-base", type=validate.interval, metavar="S",
                   help="with -P: first profile window in seconds (default 0.01)")
    p.add_argument("--by-mapping", action="store_true", help="break each window down by mapping")
    p.add_argument("--top", type=validate.whole(1, validate.MAX_COUNT, "a number of mappings"), default=10,
                   metavar="N", help="mappings shown with --by-mapping (default 10)")
    p.add_argument("--json", action="store_true", help=f"JSON lines (schema {SCHEMA})")
    p.add_argument("-T", "--timestamp", action="store_true", help="print a wall-clock time column")
    p.add_argument("--backend", default="auto", choices=["auto", *backends.BACKENDS],
                   help=BACKEND_HELP)
    add_tlb_arguments(p)
    p.add_argument("--vm", action="store_true",
                   help="PID is a VMM (QEMU, Firecracker...): measure its guest RAM, in guest-physical terms")
    p.add_argument("--qmp", metavar="SOCKET", help="with --vm: QEMU's QMP socket, for the exact layout")
    add_damon_arguments(p)


def _sample_json(s, args, policy, damon=None) -> dict:
    d = {"schema": SCHEMA, "pid": s.pid, "backend": s.backend, "time": time.time(),
         "est_s": round(s.window_s, 6), "rss_bytes": s.rss_bytes, "pss_bytes": s.pss_bytes,
         "wss_bytes": s.accessed_bytes, "ref_bytes": s.accessed_bytes, "scan_cpu_s": round(s.scan_s, 6),
         **policy.as_dict()}
    if args.vm:
        d["address_space"] = "guest-physical"    # by_mapping start/end are GPAs
    if damon is not None:
        d["damon"] = damon.as_dict()            # the settings behind these figures
    if args.by_mapping:
        d["by_mapping"] = [
            {"start": f"{u.mapping.start:#x}", "end": f"{u.mapping.end:#x}", "label": u.mapping.label,
             "kind": u.mapping.kind, "rss_bytes": u.rss_bytes, "wss_bytes": u.accessed_bytes,
             "ref_bytes": u.accessed_bytes,
             "idle_bytes": u.idle_bytes} for u in top_mappings(s.by_mapping, args.top)]
    return d


def run(args) -> int:
    pid, rest = take_pid(args, args.args)
    interval, count = windows(rest, 1.0)
    # Options that would be ignored are refused: -P runs its own windows
    # (each from one mark, so cumulative by nature), once.
    if args.profile is not None:
        ignored = [what for what, on in (("-C", args.cumulative), ("an interval or count", bool(rest))) if on]
        if ignored:
            raise UsageError(f"-P measures its own windows (powers of two from --profile-base, from one mark): "
                             f"it does not go with {' or '.join(ignored)}")
    elif args.profile_base is not None:
        raise UsageError("--profile-base goes with -P")
    if args.profile_base is None:
        args.profile_base = PROFILE_BASE_S
    qmp_needs_vm(args)
    if args.profile and args.profile_base * 2 ** (args.profile - 1) > validate.WEEK_S:
        raise UsageError(f"-P {args.profile} with --profile-base {args.profile_base:g} s would need a window "
                         "longer than a week; use fewer windows")
    # the --damon-* values before the target and backend: a typo is the
    # user's to fix whatever DAMON's state ("auto" never picks damon)
    damon_kw = damon_kwargs(args, args.backend)
    proc = user_target(pid)
    choice = backends.choose_for(args.backend, proc.pid)
    policy = tlb_policy(args, proc, choice.cls)
    kw = {"tlb_flush": policy.flush} if choice.cls.caps.tlb_flush else {}
    kw.update(damon_kw)
    damon = kw.get("settings")          # DamonSettings with --backend damon, else None
    if args.vm:
        from ..backends.guest import open_guest_backend
        from ..vm import layout_summary
        backend = open_guest_backend(choice.cls, proc, args.qmp, **kw)
        if not args.json:
            print(f"PID {pid} is a VM: {layout_summary(backend.layout)}; sizes below are the guest's RAM.")
    else:
        backend = choice.cls(proc, **kw)

    samples = []
    table = Table([("TIME", 8)] * args.timestamp + [("Est(s)", 8), ("RSS(MiB)", 10), ("PSS(MiB)", 10),
                                                     ("Ref(MiB)", 10), ("Ref%", 6)])
    if not args.json:
        print(f"Watching PID {pid} ({proc.comm}) with the {choice.cls.name} backend "
              f"[{choice.reason}]; page-level detail: {'yes' if choice.cls.caps.per_page else f'no (per {choice.cls.caps.granularity})'}. "
              "Ctrl-C to end.")
        if damon is not None:
            print(f"DAMON: {damon.describe()}")
    tlb_note(policy, args.json)
    if not args.json:
        table.header()

    def emit(s) -> None:
        samples.append(s)
        if args.json:
            json_line(_sample_json(s, args, policy, damon))
            return
        pct = 100.0 * s.accessed_bytes / s.rss_bytes if s.rss_bytes else 0.0
        table.row(([time.strftime("%H:%M:%S")] if args.timestamp else []) +
                  [f"{s.window_s:.3f}", mb(s.rss_bytes), mb(s.pss_bytes), mb(s.accessed_bytes), f"{pct:.1f}"])
        if args.by_mapping:
            sub = Table([("", 3), ("RSS(MiB)", 10), ("Ref(MiB)", 10), ("Idle(MiB)", 10), ("MAPPING", -1)])
            sub.header()
            for u in top_mappings(s.by_mapping, args.top):
                sub.row(["", mb(u.rss_bytes), mb(u.accessed_bytes), mb(u.idle_bytes), u.mapping.label])

    exited = None
    try:
        with backend:
            backend.mark()
            if args.profile:
                t0 = time.monotonic()
                for end in profile_windows(args.profile_base, args.profile):
                    time.sleep(max(0.0, t0 + end - time.monotonic()))
                    emit(backend.sample(remark=False))
            else:
                for s in rounds.paced(lambda: backend.sample(remark=not args.cumulative), interval, count):
                    emit(s)
    except KeyboardInterrupt:
        pass
    except NoSuchProcess as e:
        # The target was there when the scan began (user_target): wherever the
        # kernel layer noticed it go, the user is told it exited mid-scan.
        exited = e if isinstance(e, TargetExited) or e.pid != proc.pid else TargetExited(proc.pid)
    _summary(samples, args)
    if exited is not None:
        raise exited
    return 0


def _summary(samples, args) -> None:
    s = summarize(samples)
    if s is None:
        return
    if args.json:
        figures = {"min": s.ref_min_bytes, "mean": round(s.ref_mean_bytes), "max": s.ref_max_bytes,
                   "p50": round(s.ref_p50_bytes), "p95": round(s.ref_p95_bytes)}
        json_line({"schema": SUMMARY_SCHEMA, "samples": s.samples,
                   **{f"wss_{k}_bytes": v for k, v in figures.items()},
                   **{f"ref_{k}_bytes": v for k, v in figures.items()},     # deprecated (wss.summary/1)
                   "rss_last_bytes": s.rss_last_bytes})
    elif s.samples > 1:
        print(f"{s.samples} windows of {s.window_mean_s:.3f} s: Ref(MiB) min {s.ref_min_bytes / MB:.2f} "
              f"mean {s.ref_mean_bytes / MB:.2f} p95 {s.ref_p95_bytes / MB:.2f} max {s.ref_max_bytes / MB:.2f}")
