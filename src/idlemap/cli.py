"""Command line entry point: the only place that turns errors into exit codes."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from . import rounds
from .errors import IdlemapError, UsageError

# One module per subcommand (idlemap/commands/NAME.py), each with
# ``HELP``, ``EXAMPLES``, ``add_arguments(parser)`` and ``run(args) -> int``.
# Only the module of the command being run is imported: importing all of
# them (numpy, matplotlib, trio...) costs seconds under emulation.  The
# one-line summaries here are what `idlemap --help` lists.
COMMANDS = {
    "wss": "working-set size of a process over time (Gregg's wss columns)",
    "bitmap": "dump a process's idle and present bitmaps in the RFC layout",
    "doctor": "what this kernel offers and what each command can do here",
    "demo": "a workload with a known hot set, measured against the truth",
    "record": "record rounds of page accesses to a file",
    "report": "report on a record: wss, hot, cold, histogram, heatmap, advise, info",
    "hot": "scan N rounds, then list hot (or cold) VA ranges by mapping",
    "heatmap": "scan N rounds, then draw accesses by address and time",
    "advise": "how much memory could go: cold bytes and promotion rate per idle-age threshold",
    "reclaim": "page out pages idle for N rounds (process_madvise)",
    "tier": "move hot pages to the fast NUMA node, cold ones to the slow",
    "top": "every process (and cgroup) by working set, like top",
    "exporter": "Prometheus metrics: WSS, cold and RSS bytes per process",
    "mount": "FUSE view: DIR/<pid>/idle_bitmap, present_bitmap, idle_pages, wss",
    "vms": "list VMM processes, or show one guest's RAM layout",
    "kmod": "build, load, unload or inspect idlemap's kernel module (/dev/idlemap)",
}

DESCRIPTION = """\
Per-process idle page tracking, indexed by virtual address: the
/proc/PID/idle_bitmap that Linux never merged, on today's kernels."""


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one sentence (``idlemap: ...``, exit 2) like every
    other error, instead of a usage block and a second line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog.removeprefix('idlemap').strip() + ': ' if self.prog != 'idlemap' else ''}"
                         f"{message} (see '{self.prog} --help')")


# One unit convention everywhere (tables, headers, help): binary MiB written
# "MiB", so a figure never reads 5% bigger or smaller than it is.
UNITS_NOTE = "\nunits: sizes in MiB = 2^20 bytes (KiB, GiB likewise binary); JSON sizes are in bytes.\n"


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog="idlemap", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'idlemap COMMAND --help' for a command's options and examples." + UNITS_NOTE)
    from . import __version__
    p.add_argument("--version", action="version", version=f"idlemap {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=summary)
            continue
        mod = importlib.import_module(f".commands.{name}", __package__)
        sp = sub.add_parser(name, help=summary, description=mod.HELP,
                            epilog="examples:\n" + mod.EXAMPLES.rstrip("\n") + "\n" + UNITS_NOTE,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
        p.set_defaults(_command_parser=sp)
    return p


# Options whose value may itself start with '-' (a Python slice: -30:).
# argparse takes such a word for an option unless it looks like a number,
# so `--round-range -30:` is joined into `--round-range=-30:` first.
_DASH_VALUED = frozenset({"--round-range", "--rounds"})


def _join_dash_values(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if a in _DASH_VALUED and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and argv[i + 1] not in ("-h", "--help") and not argv[i + 1].startswith("--"):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _parse(parser: argparse.ArgumentParser, argv: list[str], selected: str | None) -> argparse.Namespace:
    """Parse argv; positionals may also follow options (`wss PID --json 1 5`),
    which argparse's subcommands alone refuse."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    sp = getattr(args, "_command_parser", None)
    if sp is None or selected not in argv:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        mixed = sp.parse_intermixed_args(argv[argv.index(selected) + 1:])
    except TypeError:            # a parser argparse cannot intermix: say what was left over
        sp.error(f"unrecognized arguments: {' '.join(extra)}")
    mixed.command = selected
    return mixed


def _selected(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


INTERRUPTED = 130     # 128 + SIGINT, what shells report for Ctrl-C
INTERNAL = 70        # sysexits' EX_SOFTWARE: a bug in idlemap

_signalled: int | None = None


def _on_signal(signum, frame) -> None:
    # SIGTERM behaves like Ctrl-C: commands catch KeyboardInterrupt and
    # print or keep what they gathered; main() then exits 130 whatever the
    # command returned, because the run did not finish as asked.
    # Inside a round loop the first signal only asks it to stop after the
    # round in progress (rounds.py), so that round's work is kept whole.
    global _signalled
    _signalled = signum
    if rounds.stop_request():
        return
    raise KeyboardInterrupt


def _say(msg: str) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        print(f"idlemap: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one command; every outcome is an exit code from errors.EXIT_CODES."""
    global _signalled
    # First thing, before argument parsing and the command's imports
    # (numpy, matplotlib: most of the first half second): Ctrl-C or SIGTERM
    # at any moment gives 130 and no traceback.
    _signalled = None
    prev = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            prev[s] = signal.signal(s, _on_signal)
        except ValueError:       # not the main thread (an embedding caller): leave signals alone
            break
    try:
        if argv is None:            # the program, not an in-process caller's malloc
            from .kernel import syscalls
            syscalls.hold_freed_memory()
        rc = _main(argv)
    except KeyboardInterrupt:
        rc = INTERRUPTED
    finally:
        for s, h in prev.items():
            # In-process callers (tests) get their handlers back.  As a
            # program the answer is settled: a signal from here on is
            # ignored -- not our handler (a KeyboardInterrupt outside any
            # try), and not the default either, which the interpreter puts
            # back while it shuts down (death by SIGINT, no exit status).
            signal.signal(s, h if argv is not None else signal.SIG_IGN)
    if _signalled is not None and rc == 0:
        rc = INTERRUPTED
    if argv is None and _signalled is not None:
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """Exit with ``rc`` without the interpreter's finalisation.

    CPython 3.11 remembers a KeyboardInterrupt raised inside code it runs
    through PyRun_* (some imports do) even after that interrupt was caught,
    and at exit turns any status into death by SIGINT (-2 to the parent,
    no summary of ours changes that).  Only after a signal, and only as a
    program: output is flushed and logging closed first."""
    import atexit
    import logging
    try:
        atexit._run_exitfuncs()      # e.g. the DAMON backend's safety net
    except Exception:  # noqa: BLE001 -- they report their own errors
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 -- a closed pipe: nothing left to keep
            pass
    try:
        logging.shutdown()
    except Exception:  # noqa: BLE001
        pass
    os._exit(rc)


def _main(argv: list[str] | None) -> int:
    try:
        argv = _join_dash_values(sys.argv[1:] if argv is None else argv)
        selected = _selected(argv)
        parser = build_parser(selected)
        args = _parse(parser, argv, selected)
        if not getattr(args, "_run", None):
            # No command: the overview for a person, and, as for any usage
            # error, the one sentence on stderr for a script's log.
            parser.print_help()
            raise UsageError("give a command (see 'idlemap --help')")
        return int(args._run(args) or 0)
    except IdlemapError as e:
        _say(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # `idlemap wss ... | head`: the reader left; not an error of ours.
        try:
            sys.stdout = None  # type: ignore[assignment]
        except Exception:
            pass
        return 0
    except MemoryError:
        _say("out of memory: the input or the options ask for more memory than this machine has")
        return 69
    except Exception as e:  # noqa: BLE001 -- the promise: no traceback reaches a user
        if _signalled is not None:
            # A KeyboardInterrupt raised inside an import can come out
            # wrapped (a dataclass's __set_name__ gives RuntimeError).
            return INTERRUPTED
        if isinstance(e, OSError):
            _say(f"{(e.strerror or str(e)).lower()}" + (f": {e.filename}" if e.filename else ""))
            return 74
        _say(f"internal error ({type(e).__name__}: {e}); please report it with the command line "
             "(IDLEMAP_DEBUG=1 shows the traceback)")
        if os.environ.get("IDLEMAP_DEBUG"):
            raise
        return INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
