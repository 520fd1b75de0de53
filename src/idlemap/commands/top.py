"""idlemap top: every process's (and cgroup's) RSS, working set and cold memory."""
from __future__ import annotations

import shutil
import sys

from .. import validate
from . import windows
from ..analysis.system import SORT_KEYS
from ..backends import SYSTEM_BACKENDS, choose_system, options_for, refusal_for
from ..backends.system import MARK_MODES, Selection
from ..errors import AccessDenied, IdlemapError, KernelThread, NoSuchProcess, TargetExited, UsageError, Zombie
from ..kernel.tasks import read_task
from ..render import top as render
from ..render.text import json_line
from ..rounds import paced
from ..tlb import resolve

HELP = "every process (and cgroup) by working set: RSS, WSS and cold MiB per window, like top"
EXAMPLES = """\
  idlemap top                       # refresh every 3 s until Ctrl-C (live view on a terminal)
  idlemap top 10 6                  # six 10 s windows
  idlemap top --sort cold --rows 15  # the 15 processes holding the most cold memory
  idlemap top 5 1 --cgroups --json  # one 5 s window, processes and cgroups, JSON
  idlemap top --pss                 # shared pages weighted by 1/mapcount too
  idlemap top --tree 1234           # only PID 1234 and its descendants
  idlemap top --vms                 # also a table of VMs: each VMM's guest RAM only
With idlemap's module loaded (kmod), each window is one page-table walk per
process in the kernel, read and re-mark together, TLB flushed (a KVM guest's
VMM among the processes keeps page_idle: the module cannot see its guest's
accesses).  With page_idle (CONFIG_IDLE_PAGE_TRACKING, root) each window costs
one global mark and one read of the bitmap, whatever the number of processes;
without either, idlemap falls back to clear_refs per process.  The first line
says which, and why.
"""
SCHEMA = render.SCHEMA
DEFAULT_INTERVAL_S = 3.0


def pid_list(text: str) -> list[int]:
    try:
        pids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"bad PID list {text!r}: expected numbers like 12,34") from None
    if not pids or any(p <= 0 for p in pids):
        raise UsageError(f"bad PID list {text!r}: expected positive numbers like 12,34")
    return pids


def add_selection_arguments(p) -> None:
    p.add_argument("--pids", action="append", metavar="PID[,PID...]",
                   help="only these processes (repeatable)")
    p.add_argument("--tree", action="append", type=validate.pid, metavar="PID",
                   help="only PID and its descendants, as they come and go (repeatable)")
    p.add_argument("--pss", action="store_true",
                   help="also PSS-weighted figures: a page shared by k mappings counts 1/k in each")
    p.add_argument("--backend", default="auto", choices=["auto", *SYSTEM_BACKENDS],
                   help="auto: kmod (one walk per process) if idlemap's module is loaded, else page_idle "
                        "(one global pass) if available, else clear_refs per process")
    p.add_argument("--vms", action="store_true",
                   help="page_idle: also a row per virtual machine -- a VMM's guest RAM only -- from "
                        "the same pass (docs/vms.md); auto then keeps page_idle even where kmod is loaded")
    # Unflushed by default, unlike the per-process commands: a system-wide
    # flush would clear the soft-dirty bits of every process on the machine
    # (other tools' state) and walk each one's page tables every window
    # (docs/tlb.md).  The output says its readings may be low.
    p.add_argument("--tlb-flush", default="none", choices=["none", "soft-dirty"],
                   help="page_idle: flush each process's TLB after the mark (default none: the output "
                        "says readings may be low; soft-dirty clears every process's soft-dirty bits)")
    p.add_argument("--mark", default="frames", choices=MARK_MODES,
                   help="page_idle: mark the union of all processes' frames (default), or the whole "
                        "frame range holding them (one contiguous write, also marks page cache)")


def selection_from(args) -> Selection:
    pids = None
    born: set[tuple[int, int]] = set()
    if args.pids:
        pids = frozenset(p for text in args.pids for p in pid_list(text))
    trees = frozenset(args.tree) if args.tree else None
    for p in sorted((pids or set()) | (trees or set())):
        t = read_task(p)
        if t is None:
            raise NoSuchProcess(p)
        born.add((t.pid, t.start_ticks))
    return Selection(pids, trees, frozenset(born) if born else None)


def make_scanner(args, cgroups: bool):
    selection = selection_from(args)
    choice = choose_system(args.backend, selection=selection, guests=args.vms)
    # Each option goes to the scanners whose capabilities take it (a value
    # left at its default is not "given"; a flush asked of a scanner that
    # flushes in its own walk is already done).
    caps = choice.cls.caps
    given = {
        "mark": ("--mark", None if args.mark == "frames" else args.mark),
        "guests": ("--vms", args.vms or None),
        "tlb_flush": ("--tlb-flush", None if args.tlb_flush == "none" or caps.flushes_tlb else args.tlb_flush)}
    for key, (flag, value) in given.items():
        if value is not None and key not in caps.options:
            auto_lacks([n for n, c in SYSTEM_BACKENDS.items() if key in c.caps.options],
                       flag if value is True else f"{flag} {value}", args.backend)
    kw = options_for(choice.cls, given)
    scanner = choice.cls(selection, pss=args.pss, cgroups=cgroups, **kw)
    scanner.tlb = resolve(None, args.tlb_flush, can_flush=True, what=f"{choice.cls.name} backend",
                          flushes_itself=caps.flushes_tlb)
    return choice, scanner


def _given(args) -> list[int]:
    """The PIDs the user named (--pids and --tree roots), in order, once each."""
    pids = [p for text in args.pids or [] for p in pid_list(text)] + list(args.tree or [])
    return list(dict.fromkeys(pids))


def refuse_unmeasurable(args) -> None:
    """Before any window: when every named PID is a kernel thread (no user
    memory: exit 2, as in every command) or a zombie (exit 1), say so
    instead of showing empty windows.  One that can be measured is enough."""
    given = _given(args)
    if not given:
        return
    why: dict[int, IdlemapError] = {}
    for pid in given:
        t = read_task(pid)
        if t is None:
            raise NoSuchProcess(pid)
        if t.kthread:
            why[pid] = KernelThread(pid, t.comm)
        elif t.state in ("Z", "X"):
            why[pid] = Zombie(pid)
        else:
            return
    if len(why) == 1:
        raise next(iter(why.values()))
    kthreads = [p for p, e in why.items() if isinstance(e, KernelThread)]
    zombies = [p for p in why if p not in kthreads]
    parts = ([f"{_pids(kthreads)} {'is a kernel thread' if len(kthreads) == 1 else 'are kernel threads'}"]
             if kthreads else []) + ([f"{_pids(zombies)} {'is a zombie' if len(zombies) == 1 else 'are zombies'}"]
                                     if zombies else [])
    msg = f"none of the given processes can be measured: {' and '.join(parts)} (no user memory)"
    # a wrong kind of target is the user's to fix (2); only exited ones are 1
    raise UsageError(msg) if kthreads else IdlemapError(msg)


def _pids(pids: list[int]) -> str:
    return ("PID " if len(pids) == 1 else "PIDs ") + ", ".join(map(str, pids))


def refuse_none_measured(args, denied: int) -> None:
    """After windows in which no named process was measured: why, as an
    error (exit 77 when they were not ours to read, else 1: they exited)."""
    given = _given(args)
    if denied:
        raise AccessDenied(f"{'process' if len(given) == 1 else 'processes'} {', '.join(map(str, given))}",
                           "run as root or as their owner")
    if len(given) == 1:
        raise TargetExited(given[0])
    raise IdlemapError(f"processes {', '.join(map(str, given))} exited during the scan: none was measured")


def auto_lacks(takers: list[str], flag: str, backend: str) -> None:
    """With --backend auto, ``flag`` needs one of the backends ``takers``:
    when none of them can run here, why (the kernel lacks page_idle: exit
    69 naming its CONFIG_; not root: 77) -- not "use --backend X", which
    would fail the same way.  A backend named by the user, or one of the
    takers that could run, leaves the usage error (exit 2) to the caller."""
    if backend != "auto" or not takers:
        return
    errors = [refusal_for(n, f"{flag} needs the {n} backend") for n in takers]
    if all(e is not None for e in errors):
        raise errors[0]


def add_arguments(p) -> None:
    p.add_argument("args", nargs="*", metavar="interval [count]",
                   help=f"window length in seconds (default {DEFAULT_INTERVAL_S:g}), "
                        "number of windows (default: until Ctrl-C)")
    p.add_argument("--cgroups", action="store_true", help="also a table of cgroup v2 groups")
    p.add_argument("--json", action="store_true", help=f"one JSON object per window (schema {SCHEMA})")
    p.add_argument("--sort", default="wss", choices=SORT_KEYS, help="largest first by this (default wss)")
    # --rows, not -n: -n is the number of rounds in every windowed command.
    p.add_argument("--rows", type=validate.limit, default=None, metavar="N",
                   help="rows per table (default: what fits on a terminal, all otherwise; 0: all)")
    add_selection_arguments(p)


def run(args) -> int:
    interval, count = windows(args.args, DEFAULT_INTERVAL_S, usage="[interval [count]]")
    if args.rows is not None and args.rows < 0:
        raise UsageError("--rows must be 0 (all) or a positive number of rows")
    if args.sort == "pss" and not args.pss:
        raise UsageError("--sort pss needs --pss")
    tty = sys.stdout.isatty() and not args.json
    refuse_unmeasurable(args)
    choice, scanner = make_scanner(args, args.cgroups)
    n = args.rows
    if n is None:
        n = render.rows_that_fit(shutil.get_terminal_size().lines, args.cgroups) if tty else 0
    intro = (f"backend {choice.cls.name}: {choice.cls.caps.summary} [{choice.reason}]")
    if not scanner.tlb.exact:
        intro += f"\nnote: {scanner.tlb.note}"
    view = None
    rounds = measured = denied = 0
    interrupted = False
    try:
        with scanner:
            if tty:
                view = render.LiveView()
                view.message(f"{intro}\nmarking every process idle; first window ends in {interval:g} s ...")
            elif not args.json:
                print(intro, flush=True)
            scanner.mark()
            for s in paced(lambda: scanner.sample(remark=True), interval, count):
                rounds += 1
                measured += len(s.processes)
                denied += s.denied
                if args.json:
                    json_line({**render.as_json(s, args.sort, n, args.cgroups, rounds), **scanner.tlb.as_dict()})
                    continue
                f = render.frame(s, args.sort, n, args.pss, args.cgroups, rounds,
                                 subtitle=(f"[{choice.reason}]" + ("" if scanner.tlb.exact else " [TLB not flushed: "
                                           "may read low]")) if view is not None else "")
                if view is not None:
                    view.show(f)
                else:
                    sys.stdout.write(render.plain(f) + "\n")
                    sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if view is not None:
            view.close()
    # Named processes, whole windows, and not one of them measured: an
    # error, not a table of zeros (every window is already printed above).
    if rounds and not measured and not interrupted and _given(args):
        refuse_none_measured(args, denied)
    return 0
