"""Thin commands: parse options, call backends/analysis, hand results to renderers."""
from __future__ import annotations

import argparse

from .. import validate
from ..errors import UsageError


def pid_arg(p: argparse.ArgumentParser) -> None:
    """bcc grammar: ``cmd [-p PID] ...`` or ``cmd PID ...``."""
    p.add_argument("-p", "--pid", dest="pid_opt", type=validate.pid, metavar="PID", help="target process")


def take_pid(args, positional: list) -> tuple[int, list]:
    """Resolve the PID from -p or the first positional; return the rest."""
    if args.pid_opt is not None:
        return args.pid_opt, positional
    if not positional:
        raise UsageError("give the target's PID (idlemap CMD PID, or -p PID)")
    try:
        pid = int(positional[0])
    except ValueError:
        raise UsageError(f"PID must be a number, not {positional[0]!r}") from None
    if pid < 1:           # as -p PID (validate.pid): 0 and negatives are typos, not absent processes
        raise UsageError(f"PID must be a positive number, not {positional[0]!r}")
    return pid, positional[1:]


def user_target(pid: int):
    """The target's ProcessId, refusing a kernel thread the same way (exit 2)
    in every command: it has no user memory, so any answer would be zeros."""
    from ..errors import KernelThread
    from ..kernel.process import identify
    proc = identify(pid)
    if proc.is_kernel_thread:
        raise KernelThread(proc.pid, proc.comm)
    return proc


def windows(rest: list, default_interval: float, default_count: int | None = None,
            opt_interval: float | None = None, opt_count: int | None = None,
            usage: str = "PID [interval [count]]") -> tuple[float, int | None]:
    """The bcc grammar every windowed command shares: ``[interval [count]]``
    after the PID (seconds; number of windows).  ``-i``/``-n``, where a
    command also takes them, say the same thing and may not say it twice."""
    if len(rest) > 2:
        raise UsageError(f"too many arguments: expected {usage}")
    from .. import validate
    interval = validate.parse(rest[0], validate.interval, "interval") if rest else None
    count = validate.parse(rest[1], validate.count, "count") if len(rest) > 1 else None
    if interval is not None and opt_interval is not None:
        raise UsageError("give the interval once: as a positional argument or as -i/--interval")
    if count is not None and opt_count is not None:
        raise UsageError("give the count once: as a positional argument or as -n/--rounds")
    interval = interval if interval is not None else opt_interval
    count = count if count is not None else opt_count
    return (default_interval if interval is None else interval,
            default_count if count is None else count)


def parse_range(text: str) -> tuple[int, int]:
    """'0x7f00-0x7fff' or '140000000000-140000100000' (hex with 0x, else decimal)."""
    try:
        a, b = text.split("-", 1)
        lo, hi = int(a, 0), int(b, 0)
    except ValueError:
        raise UsageError(f"bad range {text!r}: expected START-END, e.g. 0x7f0000000000-0x7f0040000000") from None
    if hi <= lo:
        raise UsageError(f"bad range {text!r}: END must be above START")
    if lo < 0 or hi > 1 << 64:    # beyond any address space: a typo, and too big for the int64 page maths
        raise UsageError(f"bad range {text!r}: addresses must lie within 0-0x{(1 << 64):x}")
    return lo, hi


def qmp_needs_vm(args) -> None:
    """--qmp names the VMM's socket: an option of --vm alone (checked before
    the target and the backend, so it is exit 2 whatever the system says)."""
    if getattr(args, "qmp", None) and not args.vm:
        raise UsageError("--qmp goes with --vm")


# -- DAMON settings, shared by the commands that take --backend damon ----------
# What --backend auto picks, for every command's --backend help.
AUTO_PER_PAGE = ("kmod if idlemap's module is loaded and the target is not a KVM guest's VMM, "
                 "else page_idle if available")
BACKEND_HELP = (f"how to measure (default auto: {AUTO_PER_PAGE}, else clear_refs; the first "
                "line says which and why, JSON rows carry it as \"backend\")")


MAX_REGIONS = validate.MAX_COUNT


def damon_regions(text: str) -> tuple[int, int]:
    """--damon-regions MIN-MAX, checked while options are parsed: DAMON
    needs at least 3 regions (damon_set_attrs) and MIN <= MAX."""
    try:
        lo, hi = (int(x, 10) for x in text.split("-", 1))
    except ValueError:
        lo = hi = None
    if lo is None or not 3 <= lo <= hi <= MAX_REGIONS:
        raise argparse.ArgumentTypeError(
            f"must be MIN-MAX region counts, at least 3 regions and MIN <= MAX <= {MAX_REGIONS} "
            f"(e.g. 100-1000), not {text!r}")
    return lo, hi


def add_damon_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DAMON (--backend damon; defaults: idlemap's, see docs/accuracy.md)")
    g.add_argument("--damon-sample", type=validate.number(0, 1e9, "milliseconds"), metavar="MS", help="sampling interval (default 5 ms)")
    g.add_argument("--damon-aggr", type=validate.number(0, 1e9, "milliseconds"), metavar="MS", help="aggregation interval (default 100 ms)")
    g.add_argument("--damon-update", type=validate.number(0, 1e9, "milliseconds"), metavar="MS", help="regions update interval (default 1000 ms)")
    g.add_argument("--damon-regions", metavar="MIN-MAX", type=damon_regions,
                   help="region count bounds (default 100-1000; DAMON's own default is 10-1000)")
    g.add_argument("--damon-estimator", choices=["union", "median"],
                   help="window from aggregations: union (default) or median (DAMON's snapshot view)")
    g.add_argument("--damon-exact", action="store_true",
                   help="also exact accessed bytes per window from a DAMOS 'young' filter (Linux 6.14+)")


DAMON_OPTS = ("damon_sample", "damon_aggr", "damon_update", "damon_regions", "damon_estimator")


def damon_kwargs(args, backend_name: str) -> dict:
    """``{"settings": DamonSettings}`` for the damon backend from the
    --damon-* options; {} for other backends (which refuse those options)."""
    given = [o for o in DAMON_OPTS if getattr(args, o, None) is not None] + (
        ["damon_exact"] if getattr(args, "damon_exact", False) else [])
    from ..backends import BACKENDS
    cls = BACKENDS.get(backend_name)
    if cls is None or not cls.caps.damon_settings:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} goes with --backend damon")
        return {}
    import dataclasses

    from ..backends.damon import DamonSettings
    base = DamonSettings()
    a = base.attrs
    ms = lambda v, d: d if v is None else int(round(v * 1000))   # noqa: E731 - ms -> us
    lo, hi = a.min_nr_regions, a.max_nr_regions
    if args.damon_regions is not None:
        regions = args.damon_regions
        if isinstance(regions, str):        # a caller that built args itself, not through argparse
            try:
                regions = damon_regions(regions)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"bad --damon-regions: {e}") from None
        lo, hi = regions
    attrs = dataclasses.replace(a, sample_us=ms(args.damon_sample, a.sample_us), aggr_us=ms(args.damon_aggr, a.aggr_us),
                                update_us=ms(args.damon_update, a.update_us), min_nr_regions=lo, max_nr_regions=hi)
    why = attrs.validate()
    if why:
        raise UsageError(f"bad DAMON settings: {why}")
    return {"settings": dataclasses.replace(base, attrs=attrs, estimator=args.damon_estimator or base.estimator,
                                            exact=args.damon_exact)}


# -- the TLB flush (tlb.py), one option for every command that marks pages ----
TLB_HELP = ("flush the target's TLB after each mark so hot pages cached there cannot read idle: "
            "auto (default) = soft-dirty unless another tool uses the target's soft-dirty bits; "
            "soft-dirty = clear_refs 4 (costs a minor fault per page written per window on kernels "
            "with CONFIG_MEM_SOFT_DIRTY)")


def add_tlb_arguments(p: argparse.ArgumentParser, acting: bool = False, default: str = "auto") -> None:
    """--tlb-flush for every command that marks pages; actions never run
    unflushed except with --unsafe-no-tlb-flush (docs/tlb.md)."""
    if acting:
        p.add_argument("--tlb-flush", default=default, choices=["auto", "soft-dirty"], help=TLB_HELP)
        p.add_argument("--unsafe-no-tlb-flush", action="store_true",
                       help="act on unflushed readings: hot pages cached in the TLB can read idle and be "
                            "paged out or moved (prints a warning)")
    else:
        p.add_argument("--tlb-flush", default=default, choices=["auto", "soft-dirty", "none"],
                       help=TLB_HELP + "; none = never flush (readings may be low; the output says so)")


def tlb_policy(args, proc, backend_cls, acting: bool = False):
    """The resolved tlb.TlbPolicy for these options, this target and backend."""
    from ..tlb import resolve_for
    return resolve_for(proc, args.tlb_flush, backend_cls, acting=acting,
                       unsafe=getattr(args, "unsafe_no_tlb_flush", False))


def tlb_note(policy, json_mode: bool = False) -> None:
    """Say once that readings may be hidden by the TLB (JSON rows carry
    tlb_exact instead); a warning for --unsafe-no-tlb-flush goes to stderr
    in every mode."""
    import sys
    if policy.exact:
        return
    if policy.note.startswith("warning:"):
        print(f"idlemap: {policy.note}", file=sys.stderr, flush=True)
    elif not json_mode:
        print(f"note: {policy.note}", flush=True)
