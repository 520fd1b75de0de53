"""idlemap advise PID: how much memory could go, and what it would cost.

Scans N rounds (like ``idlemap hot``), then for every idle-age threshold
the rounds resolve prints the cold bytes and the promotion rate they
showed, and the smallest threshold that meets ``--target``
(analysis/advise.py defines every figure; docs/advise.md explains them).
``idlemap report FILE advise`` prints the same from a record:
:func:`show` is shared.
"""
from __future__ import annotations

import argparse
import json

from .. import outputs
from ..analysis import advise as A
from ..render.units import human_bytes
from . import AUTO_PER_PAGE

HELP = ("savings advisor: cold bytes and promotion rate for every idle-age threshold, and the "
        "smallest threshold that keeps promotions under a target (far-memory style)")
EXAMPLES = """\
  idlemap advise 1234                      # 10 rounds of 1 s, then the advice
  idlemap advise 1234 -i 30 -n 40          # thresholds from 30 s to 19.5 min
  idlemap advise 1234 --target 0.1%/min    # a stricter promotion-rate target
  idlemap advise 1234 --json               # every threshold, schema idlemap.advise/1
  idlemap advise 1234 --png advice.png     # savings against promotion rate
  idlemap advise --vm 4321 -n 20           # a VMM: its guest RAM
  idlemap advise --cgroup /app -n 20       # every process of a cgroup v2 group, summed
  idlemap report app.rec advise            # the same from a record file
A threshold of k rounds is T = k x interval: pages idle >= T are "cold".
Their promotion rate is how many cold pages were touched again, per minute,
as a share of the working set (mean resident bytes).  See docs/advise.md.
"""
SCHEMA = "idlemap.advise/1"
MAX_ROWS = 40


def target_arg(text: str) -> float:
    """argparse type= for --target ("0.2%/min")."""
    try:
        return A.parse_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


target_arg.idlemap_numeric = True       # found by the tests of every numeric option


def add_target_option(p) -> None:
    # dest: "target" is the PID positional of the scanning commands
    p.add_argument("--target", type=target_arg, default=A.DEFAULT_TARGET_PCT_PER_MIN, metavar="RATE",
                   dest="target_rate",
                   help="promotion-rate target, percent of the working set per minute "
                        "(default 0.2%%/min; also %%/s, %%/h)")


def add_arguments(p) -> None:
    from .record import add_scan_arguments
    add_scan_arguments(p, 10, backend_help=f"how to measure (default auto: {AUTO_PER_PAGE}; ages need "
                       "pages, so there is no per-mapping fallback; --backend damon: DAMON's regions)")
    add_target_option(p)
    p.add_argument("-o", "--output", metavar="FILE", type=outputs.arg("the record"),
                   help="also write the rounds to a record file")
    p.add_argument("--json", action="store_true", help=f"one JSON object ({SCHEMA})")
    p.add_argument("--png", metavar="FILE", type=outputs.arg("the PNG"),
                   help="also write a PNG of savings against promotion rate (needs matplotlib)")
    p.add_argument("--cgroup", metavar="PATH",
                   help="every process of this cgroup v2 group (and the groups below it), summed, with a "
                        "row per process (/sys/fs/cgroup/app or /app); then give no PID")


def run(args) -> int:
    # Imported here: `report FILE advise` uses show() below and must not pull
    # in the scanner and its backends.
    if args.cgroup is not None:
        from .advise_cgroup import run as run_cgroup
        return run_cgroup(args)
    from .live import scan_and_show
    from .record import check_scan_options
    from ..backends import BACKENDS, choose_for
    cls = BACKENDS.get(args.backend)
    if cls is None or cls.caps.granularity != "region":
        # Ages need per-page rounds: say so before scanning, not after N
        # rounds of per-mapping totals that cannot answer.
        from . import take_pid, user_target
        given = list(getattr(args, "args", None) or [])
        if not given and getattr(args, "target", None) is not None:
            given = [args.target]
        pid, rest = take_pid(args, given)
        check_scan_options(args, rest)      # options that would be ignored: exit 2 before exit 69
        user_target(pid)              # an unknown PID is exit 1 everywhere, checked first
        choose_for("auto" if cls is None or not cls.caps.per_page else args.backend, pid, need_per_page=True)
    return scan_and_show("advise", args)


# -- shared with `report FILE advise` ------------------------------------------
def _rows(adv: A.Advice) -> list[A.Threshold]:
    """All thresholds, or (long records) a log-spaced subset that keeps the
    advised one and the ends; --json always has all."""
    t = adv.thresholds
    if len(t) <= MAX_ROWS:
        return t
    import numpy as np
    idx = set(np.unique(np.geomspace(1, len(t), MAX_ROWS - 1).astype(int) - 1).tolist())
    if adv.advised is not None:
        idx.add(adv.advised.rounds - 1)
    return [t[i] for i in sorted(idx)]


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}" if whole > 0 else "-"


def print_advice(adv: A.Advice, title: str) -> None:
    mib = 1 << 20
    print(f"savings advice for {title}: {adv.rounds} rounds of {adv.interval_s:.3g} s, working set "
          f"(mean resident) {human_bytes(adv.working_set_bytes)}, target {adv.target_pct_per_min:g}%/min")
    if not adv.thresholds:
        print("fewer than 2 rounds: no threshold can be resolved (scan or record more rounds)")
        return
    cols = [("T(s)", 9), ("ROUNDS", 6), ("COLD(MiB)", 10), ("COLD_END(MiB)", 13), ("COLD(%WS)", 9),
            ("PROMOTED(MiB)", 13), ("RATE(%/min)", 11), ("", -8)]
    print(" ".join(c.rjust(w) if w > 0 else c for c, w in cols).rstrip())
    for t in _rows(adv):
        mark = "<- advised" if adv.advised is not None and t.rounds == adv.advised.rounds else ""
        vals = [f"{t.seconds:.3g}", t.rounds, f"{t.cold_mean_bytes / mib:.2f}", f"{t.cold_end_bytes / mib:.2f}",
                _pct(t.cold_mean_bytes, adv.working_set_bytes), f"{t.promoted_bytes / mib:.2f}",
                f"{t.rate_pct_per_min:.4f}", mark]
        print(" ".join(str(v).rjust(w) if w > 0 else str(v) for v, (_, w) in zip(vals, cols)).rstrip())
    print()
    a = adv.advised
    if a is None:
        last = adv.thresholds[-1]
        print(f"no threshold up to {last.seconds:.3g} s meets {adv.target_pct_per_min:g}%/min "
              f"(the longest shows {last.rate_pct_per_min:.4f}%/min): scan or record longer")
    else:
        print(f"advised: T = {a.seconds:.3g} s ({a.rounds} rounds): {human_bytes(a.cold_mean_bytes)} cold on "
              f"average ({_pct(a.cold_mean_bytes, adv.working_set_bytes)}% of the working set; "
              f"{human_bytes(a.cold_end_bytes)} at the last round), promotion rate "
              f"{a.rate_pct_per_min:.4f}%/min over {a.observed_s:.3g} s")


def advice_png(adv: A.Advice, path: str, title: str) -> None:
    from ..render.heatmap import _save, load_matplotlib
    Figure, Canvas = load_matplotlib()
    mib = 1 << 20
    fig = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    xs = [t.rate_pct_per_min for t in adv.thresholds]
    ys = [t.cold_mean_bytes / mib for t in adv.thresholds]
    ax.plot(xs, ys, color="#1b9e77", marker="o", lw=1.2, label="threshold T (labelled in s)")
    step = max(1, len(xs) // 15)
    for t in adv.thresholds[::step]:
        ax.annotate(f"{t.seconds:.3g}", (t.rate_pct_per_min, t.cold_mean_bytes / mib), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axvline(adv.target_pct_per_min, color="#d95f02", ls="--", lw=1,
               label=f"target {adv.target_pct_per_min:g}%/min")
    if adv.advised is not None:
        a = adv.advised
        ax.plot([a.rate_pct_per_min], [a.cold_mean_bytes / mib], marker="*", ms=16, color="#7570b3",
                ls="none", label=f"advised T = {a.seconds:.3g} s: {human_bytes(a.cold_mean_bytes)}")
    ax.set_xscale("symlog", linthresh=max(adv.target_pct_per_min / 10, 1e-4))
    ax.set_xlabel("promotion rate (% of the working set per minute)")
    ax.set_ylabel("cold memory at T, mean (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    _save(fig, Canvas, path)


def show(h, args, source: dict, head: dict) -> int:
    """The advise report over a History (report.show calls this)."""
    adv = A.advise_history(h, getattr(args, "target_rate", A.DEFAULT_TARGET_PCT_PER_MIN),
                           source.get("interval_s") or None)
    who = f"PID {source.get('pid')} ({source.get('comm', '')})"
    vm = source.get("vm")
    if vm:
        who = f"VM {vm.get('name') or '(unnamed)'} ({vm.get('vmm')}, PID {source.get('pid')}, guest RAM)"
    png = getattr(args, "png", None)
    if not args.json:
        print_advice(adv, who)          # first: a PNG that fails to write must not take it along
    if png:
        advice_png(adv, png, f"{who}: memory idle >= T against its promotion rate")
    if args.json:
        print(json.dumps({**head, "schema": SCHEMA, **adv.as_dict(), **({"png": png} if png else {})}))
    elif png:
        print(f"wrote {png}")
    return 0
