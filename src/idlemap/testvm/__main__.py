"""python -m idlemap.testvm [options] -- CMD ARGS...: run CMD in the test VM.

Examples:
  python -m idlemap.testvm -- cat /proc/version
  python -m idlemap.testvm --numa 2 --mem 3072 -- python -m pytest tests -m vm
  python -m idlemap.testvm --rw /tmp/out --env OUT=/tmp/out -- python bench.py
  python -m idlemap.testvm --kernel stock-6.1 -- cat /proc/version    # Debian's kernel
  python -m idlemap.testvm --kernel stock-6.12 -- cat /proc/version   # Debian's newer one
  python -m idlemap.testvm --kernel debug -- dmesg      # KASAN, lockdep (4096 MiB)
"""
from __future__ import annotations

import argparse
import sys

from ..errors import IdlemapError
from . import kernel_image, real_python, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m idlemap.testvm", description="Run a command in idlemap's test VM "
        "(a kernel with page_idle, DAMON, soft-dirty, NUMA...); exits with its status, "
        "or 125 if the VM itself failed.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mem", type=int, metavar="MiB",
                        help="guest RAM (default 2048; 4096 with --kernel debug: KASAN's shadow "
                        "takes an eighth and its quarantine holds freed memory back)")
    parser.add_argument("--cpus", type=int, default=2, metavar="N", help="guest vCPUs (default 2)")
    parser.add_argument("--numa", type=int, default=1, metavar="N", help="NUMA nodes (default 1)")
    parser.add_argument("--rw", action="append", default=[], metavar="DIR",
                        help="share DIR read-write (writes reach the host); repeatable")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the guest (PATH always is); repeatable")
    parser.add_argument("--timeout", type=float, default=1800, metavar="S",
                        help="stop the VM after S seconds (default 1800)")
    parser.add_argument("--kernel-arg", action="append", default=[], metavar="PARAM",
                        help="add PARAM to the guest kernel's command line (e.g. hugepagesz=1G "
                        "hugepages=1: a 1 GiB page reserved at boot); repeatable")
    parser.add_argument("--cwd", metavar="DIR", help="working directory (default: the current one)")
    parser.add_argument("--kernel", choices=("test", "debug", "stock-6.1", "stock-6.12"), default="test",
                        help="test: idlemap's own 6.1 (page_idle, DAMON...; the default); "
                        "debug: the same with KASAN, PROVE_LOCKING, DEBUG_VM, DEBUG_ATOMIC_SLEEP, "
                        "DEBUG_LIST (release 6.1.N-debug; build-kernel.sh --debug, ~10 min once); "
                        "stock-6.1: Debian 12's linux-image-6.1.0-N-amd64, no page_idle; "
                        "stock-6.12: its linux-image-6.12.N+deb12-amd64 (DAMON, no page_idle); "
                        "both fetched once (testvm/stock-kernel.sh)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants NAME=VALUE, not {item!r}")
        env[name] = value
    if command[0] in ("python", "python3"):
        command[0] = real_python()      # a pyenv shim costs 2-3 s per start in the guest
    try:
        kernel = initrd = None
        if args.kernel == "debug":
            kernel = kernel_image(debug=True, progress=lambda line: print(line, file=sys.stderr, flush=True))
        elif args.kernel != "test":
            from .stock import SERIES, stock_kernel
            kernel, initrd = stock_kernel(SERIES[args.kernel],
                                          progress=lambda line: print(line, file=sys.stderr, flush=True))
        mem = args.mem or (4096 if args.kernel == "debug" else 2048)
        return run(command, mem_mib=mem, cpus=args.cpus, numa_nodes=args.numa, env=env,
                   timeout_s=args.timeout, cwd=args.cwd, rw_dirs=args.rw, kernel=kernel, initrd=initrd,
                   kernel_args=args.kernel_arg)
    except (IdlemapError, ValueError) as e:
        print(f"idlemap.testvm: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 125) if isinstance(e, IdlemapError) else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
