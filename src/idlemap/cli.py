"""Command line entry point: the only place that turns errors into exit codes."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from .errors import IdlemapError

# One module per subcommand (idlemap/commands/NAME.py), each with
# ``HELP``, ``EXAMPLES``, ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = ["wss", "bitmap", "doctor", "demo"]

DESCRIPTION = """\
Per-process idle page tracking, indexed by virtual address: the
/proc/PID/idle_bitmap that Linux never merged, on today's kernels."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="idlemap", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'idlemap COMMAND --help' for a command's options and examples.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"idlemap {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f".commands.{name}", __package__)
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                            epilog="examples:\n" + mod.EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    # SIGTERM behaves like Ctrl-C: commands print what they gathered.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    parser = build_parser()
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
