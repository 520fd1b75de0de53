"""idlemap bitmap: dump the VA-indexed idle bitmap (RFC layout) to a file."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from .. import backends, outputs, validate
from ..analysis.spans import merge_ranges
from ..errors import UsageError
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE
from ..kernel.process import cmdline
from . import add_tlb_arguments, parse_range, pid_arg, take_pid, tlb_note, tlb_policy
from . import qmp_needs_vm, user_target

HELP = "mark a process's pages idle, wait, and dump its idle + present bitmaps in the RFC layout"
EXAMPLES = """\
  idlemap bitmap 1234 -o idle.bin              # every mapping, 1 s window
  idlemap bitmap 1234 --range 0x7f0000000000-0x7f0040000000 --wait 5 -o idle.bin
Writes FILE (idle bits) and FILE.present (present bits), both in the RFC's
/proc/PID/idle_bitmap layout: u64 words, 64 pages per word, byte offset b
covers virtual addresses from b << 15 (4 KiB pages).  Files are sparse:
only words of mapped ranges are written.  A bit is 1 in FILE only for a
present page that stayed idle; holes are 0 in both files.  FILE.json holds
the metadata (pid, ranges, page size, window, backend).  Read by idlemap's
module (kmod) where it is loaded, else by page_idle (root either way).
With --vm, PID is a VMM and everything is guest-physical: bit i of FILE is
guest frame i (byte offset b covers guest-physical addresses from b << 15),
--range takes guest-physical ranges, and FILE.json holds the guest layout:
  idlemap bitmap --vm 1234 -o guest.bin
  idlemap bitmap --vm 1234 --range 0x0-0x40000000 --qmp /run/vm.qmp -o low.bin
"""
SCHEMA = "idlemap.bitmap/1"


def add_arguments(p) -> None:
    pid_arg(p)
    p.add_argument("args", nargs="*", metavar="PID")
    p.add_argument("--range", action="append", default=[], metavar="START-END",
                   help="VA range (repeatable; default: every mapping)")
    p.add_argument("--wait", type=validate.seconds(lo_ok=True), default=1.0, metavar="S",
                   help="seconds between marking idle and reading (default 1)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", type=outputs.arg("the idle bitmap"),
                   help="the idle bitmap; FILE.present and FILE.json are written next to it "
                        "(each replaces only a regular file)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_tlb_arguments(p)
    p.add_argument("--vm", action="store_true",
                   help="PID is a VMM: bitmap of its guest RAM indexed by guest-physical frame")
    p.add_argument("--qmp", metavar="SOCKET", help="with --vm: QEMU's QMP socket, for the exact layout")


def word_ranges(spans) -> list[tuple[int, int]]:
    """Merged VA ranges, widened to whole u64 words (64 pages), covering spans."""
    unit = 64 * PAGE_SIZE
    return merge_ranges((s.start // unit * unit, -(-s.end // unit) * unit) for s in spans)


def write_sparse(path: str, idle_map, present_path: str) -> int:
    """Write idle/present words at their RFC offsets; returns bytes written."""
    # New files next to the targets, renamed over them only when whole
    # (idlemap.outputs: a device or FIFO at the path is refused, not replaced).
    from ..outputs import Output, _error
    written = 0
    outs = [Output(path, "the idle bitmap"), Output(present_path, "the present bitmap")]
    try:
        for lo, hi in word_ranges(idle_map.spans):
            idle, present = idle_map.rfc_words(lo, hi, holes_idle=False)
            off = (lo >> PAGE_SHIFT) // 8
            os.pwrite(outs[0].fd, idle.tobytes(), off)
            os.pwrite(outs[1].fd, present.tobytes(), off)
            written += idle.nbytes
        # Make the file length reach the top of the last range, like /proc.
    except OSError as e:
        for o in outs:
            o.discard()
        raise _error(e, path, "the idle bitmap") from None
    except BaseException:
        for o in outs:
            o.discard()
        raise
    for o in outs:
        o.close()
        o.publish()
    return written


def run(args) -> int:
    pid, rest = take_pid(args, args.args)
    if rest:
        raise UsageError("too many arguments: idlemap bitmap PID -o FILE")
    qmp_needs_vm(args)
    ranges = [parse_range(r) for r in args.range] or None
    for side in (".present", ".json"):     # FILE itself was checked while parsing
        outputs.check(args.output + side, "the bitmap's side file")   # before the scan, not after
    proc = user_target(pid)        # a kernel thread: exit 2, as in every command
    argv = cmdline(pid)            # now: a target that exits at the end of the window keeps its name
    # Per page only: kmod where the module is loaded (not for a KVM guest's
    # VMM), else page_idle; the refusal names what each lacks.
    choice = backends.choose_for("auto", pid, need_per_page=True)
    layout, gpa_ranges = None, ranges
    if args.vm:
        from ..vm import describe, find_guest_ram, gpa_ranges_to_hva, idle_map_to_gpa, layout_json
        layout = find_guest_ram(describe(pid), args.qmp)
        ranges = gpa_ranges_to_hva(layout, gpa_ranges)
        if not ranges:
            raise UsageError("the given range(s) hold no guest RAM (`idlemap vms PID` shows where it is)")
    policy = tlb_policy(args, proc, choice.cls)
    tlb_note(policy, args.json)
    with choice.cls.open_bitmap(proc, policy.flush) as bm:
        bm.mark_idle(ranges)
        time.sleep(max(0.0, args.wait))
        m = bm.read(ranges)
    if layout is not None:
        m = idle_map_to_gpa(m, layout, gpa_ranges)
    if not m.spans:
        raise UsageError("nothing is mapped in the given range(s)")
    nbytes = write_sparse(args.output, m, args.output + ".present")
    present = int(np.count_nonzero(m.present))
    idle = int(np.count_nonzero(m.present & m.idle))
    meta = {"schema": SCHEMA, "pid": pid, "comm": proc.comm, "cmdline": argv,
            "page_size": PAGE_SIZE, "window_s": round(m.window_s, 6), "time": time.time(), **policy.as_dict(),
            "backend": choice.cls.name,
            "ranges": [[f"{s.start:#x}", f"{s.end:#x}", s.mapping.label] for s in m.spans],
            "pages": m.npages, "present_pages": present, "idle_pages": idle,
            "accessed_pages": present - idle, "huge_pages_4k": int(np.count_nonzero(m.huge)),
            "files": {"idle": args.output, "present": args.output + ".present"}, "bytes_written": nbytes}
    if layout is not None:
        meta.update(address_space="guest-physical", layout=layout_json(layout))
    from ..outputs import writing
    with writing(args.output + ".json", "the bitmap's description", text=True) as f:
        json.dump(meta, f, indent=1)
    if args.json:
        print(json.dumps(meta))
    else:
        mbp = PAGE_SIZE / (1 << 20)
        print(f"PID {pid} ({proc.comm}): {m.npages} pages in {len(m.spans)} ranges, "
              f"{present} present ({present * mbp:.1f} MiB), {idle} idle ({idle * mbp:.1f} MiB), "
              f"{present - idle} accessed in {m.window_s:.2f} s")
        print(f"wrote {args.output}, {args.output}.present and {args.output}.json")
    return 0
