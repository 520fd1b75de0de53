"""idlemap exporter: Prometheus metrics of every process's working set and cold memory."""
from __future__ import annotations

import sys
import threading

from .. import validate
from ..analysis.system import SORT_KEYS
from ..errors import UsageError
from ..services import exporter as svc
from .top import add_selection_arguments, auto_lacks, make_scanner

HELP = "serve WSS, cold and RSS bytes per process (or cgroup) as Prometheus metrics"
EXAMPLES = """\
  idlemap exporter                          # 127.0.0.1:9466, 30 s windows, every process
  idlemap exporter --interval 10 --top-n 50 # the 50 largest processes only
  idlemap exporter --cgroups                # per cgroup v2 group instead of per process
  idlemap exporter --cgroups --top-processes 20   # per cgroup, and the 20 largest processes
  idlemap exporter --pids 1234,5678 --pss   # two processes, with PSS-weighted figures
  idlemap exporter --listen 0.0.0.0:9466    # every interface (default: loopback only)
  idlemap exporter --vms                    # also idlemap_guest_* series per VM (guest RAM only)
  idlemap exporter --advise --interval 30   # also advised savings and promotion rates (last 10 windows)
  curl -s 127.0.0.1:9466/metrics | grep ^idlemap_
See docs/fleet.md for systemd, Kubernetes, PromQL and a Grafana dashboard.
"""


def add_arguments(p) -> None:
    p.add_argument("--listen", default=svc.DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where to serve /metrics (default {svc.DEFAULT_LISTEN}; loopback unless told)")
    p.add_argument("--interval", type=validate.interval, default=30.0, metavar="S",
                   help="window length in seconds (default 30); exported as idlemap_interval_seconds "
                        "(a gauge, not a label: changing it keeps every series)")
    p.add_argument("--cgroups", action="store_true",
                   help="series per cgroup v2 group instead of per process (fewer series)")
    p.add_argument("--top-processes", type=validate.limit, default=0, metavar="N",
                   help="with --cgroups: also per-process series for the N largest processes by --sort "
                        "(default 0: none), so per-process panels have data at a bounded cardinality")
    p.add_argument("--top-n", type=validate.limit, default=0, metavar="N",
                   help="only the N largest processes/groups by --sort (default 0: all)")
    p.add_argument("--sort", default="rss", choices=SORT_KEYS,
                   help="what --top-n ranks by (default rss: the same series from window to window)")
    p.add_argument("--advise", action="store_true",
                   help="also the savings advisor's series per process (and per cgroup with --cgroups): "
                        "advised savings, threshold and promotion rate over the last --advise-windows windows "
                        "(page_idle system scan; docs/advise.md)")
    p.add_argument("--advise-windows", type=validate.whole(2, 10_000, "a number of windows"), default=10,
                   metavar="N", help="--advise: windows the advice looks back over (default 10: thresholds "
                                     "from 1 to 9 windows)")
    from .advise import add_target_option
    add_target_option(p)
    add_selection_arguments(p)


def run(args) -> int:
    if not args.interval > 0:
        raise UsageError("--interval must be a positive number of seconds")
    if args.top_n < 0:
        raise UsageError("--top-n must be 0 (all) or positive")
    if args.sort == "pss" and not args.pss:
        raise UsageError("--sort pss needs --pss")
    host, port = svc.parse_listen(args.listen)
    svc.require_client()
    if args.advise:         # before the scanner: page_idle missing is the kernel's (69), not a usage error
        auto_lacks(["page_idle"], "--advise", args.backend)
    choice, scanner = make_scanner(args, cgroups=args.cgroups)
    state = svc.ExporterState(choice.cls.name, choice.cls.caps.granularity, f"{args.interval:g}s",
                              tlb_flushed=scanner.tlb.exact)
    if args.advise:
        if choice.cls.name != "page_idle":
            scanner.close()
            raise UsageError(f"--advise needs the page_idle system scan (ages by frame), not {choice.cls.name} "
                             "(--backend page_idle)")
        from ..analysis.advise import FrameAdvisor
        scanner.keep_frames = True
        state.advisor = FrameAdvisor(args.advise_windows)
        state.advise_target = args.target_rate
    if args.top_processes and not args.cgroups:
        raise UsageError("--top-processes goes with --cgroups (without it every process is exported; "
                         "--top-n limits them)")
    state.interval_s = args.interval
    collector = svc.make_collector(state, processes=not args.cgroups or args.top_processes > 0,
                                   cgroups=args.cgroups, top_n=args.top_n, sort=args.sort, pss=args.pss,
                                   guests=args.vms,
                                   process_top_n=args.top_processes if args.cgroups else args.top_n)
    stop = threading.Event()
    with scanner:
        server, bound = svc.serve(host, port, collector)
        where = f"[{host}]" if ":" in host else host
        warn = "" if svc.is_loopback(host) else " (NOT loopback: reachable from the network)"
        print(f"idlemap exporter: http://{where}:{bound}/metrics{warn}; backend {choice.cls.name} "
              f"({choice.cls.caps.granularity} granularity) [{choice.reason}]; "
              f"{args.interval:g} s windows", file=sys.stderr, flush=True)
        if not scanner.tlb.exact:
            print(f"idlemap exporter: note: {scanner.tlb.note}", file=sys.stderr, flush=True)
        try:
            svc.scan_loop(scanner, state, args.interval, stop)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            if server is not None:
                server.shutdown()
                server.server_close()
    return 0
