"""Command line entry point: the only place that turns errors into exit codes."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from .errors import IdlemapError

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
    "report": "report on a record: wss, hot, cold, histogram, heatmap, info",
    "hot": "scan N rounds, then list hot (or cold) VA ranges by mapping",
    "heatmap": "scan N rounds, then draw accesses by address and time",
    "reclaim": "page out pages idle for N rounds (process_madvise)",
    "tier": "move hot pages to the fast NUMA node, cold ones to the slow",
    "top": "every process (and cgroup) by working set, like top",
    "exporter": "Prometheus metrics: WSS, cold and RSS bytes per process",
    "mount": "FUSE view: DIR/<pid>/idle_bitmap, present_bitmap, idle_pages, wss",
    "vms": "list VMM processes, or show one guest's RAM layout",
}

DESCRIPTION = """\
Per-process idle page tracking, indexed by virtual address: the
/proc/PID/idle_bitmap that Linux never merged, on today's kernels."""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="idlemap", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'idlemap COMMAND --help' for a command's options and examples.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"idlemap {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=summary)
            continue
        mod = importlib.import_module(f".commands.{name}", __package__)
        sp = sub.add_parser(name, help=summary, description=mod.HELP,
                            epilog="examples:\n" + mod.EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def _selected(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    # SIGTERM behaves like Ctrl-C: commands print what they gathered.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_selected(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except IdlemapError as e:
        sys.stdout.flush()
        print(f"idlemap: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `idlemap wss ... | head`: the reader left; not an error of ours.
        try:
            sys.stdout = None  # type: ignore[assignment]
        except Exception:
            pass
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
