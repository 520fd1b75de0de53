"""idlemap demo: a workload with a known hot set, measured against the truth."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .. import validate
from ..backends import why_not
from ..backends.clear_refs import ClearRefsBackend
from ..backends.page_idle import PageIdleBackend
from ..errors import UsageError
from ..kernel.features import probe
from ..kernel.maps import PAGE_SHIFT
from ..kernel.process import identify
from ..rounds import paced, stopped
from ..tlb import resolve as resolve_tlb
from ..testing.workload import Workload

HELP = "start a workload whose hot set is known, measure it, and print measured vs true"
EXAMPLES = """\
  idlemap demo                      # 1 GiB mapped, 256 MiB kept hot
  idlemap demo --size-mib 512 --hot-mib 64 --windows 5
  idlemap demo --json
On a kernel without page_idle (CONFIG_IDLE_PAGE_TRACKING) the demo runs
itself inside idlemap's test VM: a real Linux 6.1 built for the job and
booted under QEMU (the first run builds it, about 5 minutes).
"""
# /2: "wss_bytes"/"rss_bytes" as in every command (docs/json.md); /1's
# "process_wss_bytes"/"process_rss_bytes" kept as deprecated aliases.
SCHEMA = "idlemap.demo/2"
MiB = 1 << 20


def add_arguments(p) -> None:
    p.add_argument("--size-mib", type=validate.whole(1, 1 << 30, "a size in MiB"), default=1024, help="memory the workload maps and touches (default 1024)")
    p.add_argument("--hot-mib", type=validate.whole(1, 1 << 30, "a size in MiB"), default=256, help="part of it kept hot (default 256)")
    p.add_argument("--interval", type=validate.interval, default=1.0, help="window length in seconds (default 1)")
    p.add_argument("--windows", type=validate.count, default=3, help="windows to measure (default 3)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--here", action="store_true", help="run on this kernel (needs page_idle and root)")
    where.add_argument("--vm", action="store_true", help="run inside the test VM even if this kernel could")


def strip(accessed: np.ndarray, width: int = 64) -> str:
    """One character per 1/width of the mapping: '#' mostly accessed, '.' idle."""
    if accessed.size == 0:
        return ""
    parts = np.array_split(accessed, min(width, accessed.size))
    return "".join("#" if p.mean() >= 0.5 else ("+" if p.any() else ".") for p in parts)


def run(args) -> int:
    if args.hot_mib > args.size_mib or args.hot_mib <= 0 or args.windows <= 0 or args.interval <= 0:
        raise UsageError("need 0 < --hot-mib <= --size-mib, and positive --windows and --interval")
    f = probe()
    local_ok = why_not("page_idle", f) is None
    in_vm = args.vm or (not local_ok and not args.here)
    # Refused here in one sentence rather than met as ENOMEM in the
    # workload (or QEMU's own message) after a boot.
    need = max(2048, args.size_mib * 2 + 1024) if in_vm else args.size_mib
    have = _mem_total_mib()
    if have and need > have:
        where = "the test VM for it would need" if in_vm else "it needs"
        raise UsageError(f"--size-mib {args.size_mib} is too large: {where} {need} MiB and this machine "
                         f"has {have} MiB of memory")
    if in_vm:
        return _in_vm(args, why_not("page_idle", f))
    if not local_ok:
        from ..bitmap import require_page_idle
        require_page_idle()
    return _here(args)


def _mem_total_mib() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _in_vm(args, reason) -> int:
    from .. import testvm
    if not args.json:
        why = f"this kernel: {reason}" if reason else "asked with --vm"
        print(f"Running the demo inside idlemap's test VM ({why}).\n"
              "The VM boots a real Linux 6.1 with CONFIG_IDLE_PAGE_TRACKING under QEMU; "
              "the first run builds that kernel (about 5 minutes, cached afterwards).", flush=True)
    image = testvm.kernel_image(build=True)
    argv = [testvm.real_python(), "-m", "idlemap", "demo", "--here",
            "--size-mib", str(args.size_mib), "--hot-mib", str(args.hot_mib),
            "--interval", str(args.interval), "--windows", str(args.windows)] + (["--json"] if args.json else [])
    del image
    mem = max(2048, args.size_mib * 2 + 1024)
    return testvm.run(argv, mem_mib=mem, cwd=os.getcwd())


def _here(args) -> int:
    size, hot = args.size_mib, args.hot_mib
    out = sys.stdout
    if not args.json:
        print(f"kernel {os.uname().release}: starting a workload that maps {size} MiB, touches all of it "
              f"once, then keeps the first {hot} MiB hot.", flush=True)
    with Workload() as w:
        t0 = time.monotonic()
        addr = w.map("data", size)
        w.touch("data")
        npages = (size * MiB) >> PAGE_SHIFT
        hot_pages = (hot * MiB) >> PAGE_SHIFT
        w.hot("data", 0, hot_pages)
        proc = identify(w.pid)
        if not args.json:
            print(f"workload PID {w.pid} ready in {time.monotonic() - t0:.1f} s; data mapping at {addr:#x}.")
            print(f"\nbackend page_idle: {PageIdleBackend.caps.summary}")
            print(f"{'WINDOW':>6} {'Est(s)':>7} {'TRUE_HOT(MiB)':>14} {'MEASURED(MiB)':>14} {'ERROR(%)':>9} "
                  f"{'HOT_PAGES_SEEN':>15} {'COLD_PAGES_IDLE':>16} {'PROC_WSS(MiB)':>14}", flush=True)
        results = []
        # The defaults every command uses: flushed after each mark (tlb.py).
        policy = resolve_tlb(proc, "auto", can_flush=True)
        last_acc = None
        with PageIdleBackend(proc, ranges=None, tlb_flush=policy.flush) as be:
            be.mark()
            # The one round loop: windows on a fixed grid from the mark, and
            # a first Ctrl-C ends the demo between windows, with what it has.
            for i, s in enumerate(paced(be.sample, args.interval, args.windows)):
                m = s.idle_map
                span = next(sp for sp in m.spans if sp.start <= addr < sp.end)
                off = (addr - span.start) >> PAGE_SHIFT
                sl = slice(span.offset + off, span.offset + off + npages)
                acc = m.accessed[sl]
                measured = int(np.count_nonzero(acc))
                hot_seen = int(np.count_nonzero(acc[:hot_pages]))
                cold_idle = int(np.count_nonzero(~acc[hot_pages:]))
                err = 100.0 * (measured - hot_pages) / hot_pages
                r = {"schema": SCHEMA, "backend": "page_idle", "window": i + 1, "est_s": round(s.window_s, 4),
                     "true_hot_bytes": hot * MiB, "measured_hot_bytes": measured << PAGE_SHIFT,
                     "error_pct": round(err, 3), "hot_pages": hot_pages, "hot_pages_seen": hot_seen,
                     "cold_pages": npages - hot_pages, "cold_pages_idle": cold_idle,
                     "wss_bytes": s.accessed_bytes, "rss_bytes": s.rss_bytes,
                     "process_wss_bytes": s.accessed_bytes, "process_rss_bytes": s.rss_bytes}
                results.append(r)
                if args.json:
                    out.write(json.dumps(r) + "\n")
                else:
                    print(f"{i + 1:>6} {s.window_s:>7.3f} {hot:>14.1f} {measured / 256:>14.1f} {err:>9.2f} "
                          f"{hot_seen:>7}/{hot_pages:<7} {cold_idle:>8}/{npages - hot_pages:<7} "
                          f"{s.accessed_bytes / MiB:>14.1f}", flush=True)
                last_acc = acc
        ref = None
        if not stopped():
            # The same workload through clear_refs: exact per mapping, no page map.
            with ClearRefsBackend(proc, tlb_flush=policy.flush) as cb:
                cb.mark()
                for cs in paced(lambda: cb.sample(remark=False), args.interval, 1):
                    ref = next(u for u in cs.by_mapping if u.mapping.start <= addr < u.mapping.end)
        rounds = w.stop()
    cr_err = 100.0 * (ref.accessed_bytes - hot * MiB) / (hot * MiB) if ref is not None else None
    if args.json:
        if ref is not None:
            out.write(json.dumps({"schema": SCHEMA, "backend": "clear_refs", "true_hot_bytes": hot * MiB,
                                  "measured_hot_bytes": ref.accessed_bytes, "error_pct": round(cr_err, 3),
                                  "hot_loop_passes": rounds}) + "\n")
        return 0
    if last_acc is not None:
        print(f"\ndata mapping, one character per {size / 64:.0f} MiB ('#' accessed, '.' idle), last window:")
        print(f"  [{strip(last_acc)}]")
    if ref is not None:
        print(f"\nbackend clear_refs ({ClearRefsBackend.caps.summary}):")
        print(f"  data mapping referenced {ref.accessed_bytes / MiB:.1f} MiB vs true {hot} MiB "
              f"(error {cr_err:+.2f}%)")
    else:
        print("\nstopped: the clear_refs comparison was not run.")
    print(f"\nThe workload's hot loop made {rounds} passes over its {hot} MiB.")
    return 0
