"""idlemap vms: virtual machine monitors on this host, and where their guests' RAM is."""
from __future__ import annotations

import json

from ..errors import IdlemapError, UsageError
from ..render.text import Table
from ..vm import VMM_KINDS, describe, find_guest_ram, layout_json, layout_summary, list_vmms
from . import pid_arg, take_pid

HELP = "list VMM processes (QEMU, Firecracker, cloud-hypervisor, crosvm), or show one guest's RAM layout"
EXAMPLES = """\
  idlemap vms                          # every VMM: kind, accelerator, guest RAM
  idlemap vms 1234                     # guest-physical -> host-virtual map of one VM
  idlemap vms 1234 --qmp /run/vm.qmp   # the same, asked from QEMU itself (exact)
  idlemap vms --json
Then measure a guest in guest-physical terms:
  idlemap wss --vm 1234 1 10           # guest working set, ten 1 s windows
  idlemap bitmap --vm 1234 -o guest.bin  # RFC bitmap, bit i = guest frame i
"""
SCHEMA = "idlemap.vms/1"


def add_arguments(p) -> None:
    pid_arg(p)
    p.add_argument("args", nargs="*", metavar="PID", help="a VMM process (default: list them all)")
    p.add_argument("--qmp", metavar="SOCKET", help="QEMU's QMP unix socket: exact layout from QEMU")
    p.add_argument("--json", action="store_true", help=f"JSON (schema {SCHEMA})")


def run(args) -> int:
    if args.pid_opt is None and not args.args:
        if args.qmp:
            raise UsageError("--qmp asks one VM: give its VMM's PID (idlemap vms PID --qmp SOCKET)")
        return _list(args)
    pid, rest = take_pid(args, args.args)
    if rest:
        raise UsageError("too many arguments: idlemap vms [PID] [--qmp SOCKET]")
    layout = find_guest_ram(describe(pid), args.qmp)
    if args.json:
        print(json.dumps({"schema": SCHEMA, **layout_json(layout)}))
        return 0
    print(f"PID {pid}: {layout_summary(layout)}")
    t = Table([("GPA_START", 18), ("GPA_END", 18), ("SIZE(MiB)", 10), ("HVA_START", 18), ("BACKEND", -1)])
    t.header()
    for r in layout.regions:
        t.row([f"{r.gpa_start:#x}", f"{r.gpa_end:#x}", f"{r.size_bytes / (1 << 20):.2f}",
               f"{r.hva_start:#x}", r.backend_name])
    for n in layout.notes:
        print(f"note: {n}")
    return 0


def _list(args) -> int:
    rows = []
    for v in list_vmms():
        try:
            layout = find_guest_ram(v)
            rows.append((v, layout, ""))
        except IdlemapError as e:     # no permission, an exotic setup: still list it
            rows.append((v, None, str(e)))
    if args.json:
        print(json.dumps({"schema": SCHEMA, "vmms": [
            {"pid": v.pid, "kind": v.kind, "comm": v.comm,
             **({"layout": layout_json(lay)} if lay else {"error": err})} for v, lay, err in rows]}))
        return 0
    if not rows:
        print(f"no VMM processes found (looked for: {', '.join(VMM_KINDS)})")
        return 0
    t = Table([("PID", 7), ("KIND", -16), ("ACCEL", -7), ("RAM(MiB)", 9), ("REGIONS", 7), ("LAYOUT", -8),
               ("NAME", -1)])
    t.header()
    for v, lay, err in rows:
        if lay is None:
            t.row([v.pid, v.kind, "-", "-", "-", "-", f"({err})"])
        else:
            t.row([v.pid, v.kind, lay.accel, f"{lay.ram_bytes / (1 << 20):.0f}", len(lay.regions), lay.source,
                   lay.name or v.comm])
    return 0
