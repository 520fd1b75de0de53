"""QEMU's guest RAM layout, from its command line (the x86 pc/q35 RAM split)
or, exactly, from QMP."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BadInput
from ..kernel.maps import Mapping
from .layout import FOUR_GIB, GiB, GuestLayout, GuestRamRegion, MiB
from .vmm import VmmProcess, detect_accel

QEMU_DEFAULT_RAM = 128 * MiB            # pc and q35 default_ram_size
QEMU_DEFAULT_RAM_ID = "pc.ram"          # pc and q35 default_ram_id


# -- QEMU's command line ---------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$", re.I)
_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text, default_unit: str = "b") -> int:
    """QEMU's size syntax (qemu_strtosz): 512, 1.5G, 0x1000; binary suffixes."""
    if isinstance(text, int):
        return text
    t = str(text).strip()
    if t.lower().startswith("0x"):
        return int(t, 16)
    m = _SIZE.match(t)
    if not m:
        raise BadInput(f"cannot read the size {text!r} in the VMM's command line")
    unit = (m.group(2) or default_unit).lower()
    return int(float(m.group(1)) * (1 << _SHIFT[unit]))


def split_opts(text: str) -> tuple[str, dict[str, str]]:
    """'type,key=val,...' (',,' is a literal comma) -> ('type', {key: val}).
    A first element with '=' counts as a key, and the implied name is ''."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    first = ""
    opts: dict[str, str] = {}
    for n, p in enumerate(parts):
        if "=" in p:
            k, _, v = p.partition("=")
            opts[k] = v
        elif n == 0:
            first = p
        elif p:
            opts[p] = "on"        # a bare flag
    return first, opts


@dataclass(frozen=True, slots=True)
class QemuBackend:
    id: str
    qom_type: str            # memory-backend-ram / -file / -memfd ...
    size_bytes: int
    options: dict = field(default_factory=dict)


@dataclass(slots=True)
class QemuConfig:
    """What QEMU's command line says about guest RAM."""
    machine: str = "pc"
    ram_bytes: int = QEMU_DEFAULT_RAM
    ram_given: bool = False
    backends: list[QemuBackend] = field(default_factory=list)   # in creation order
    ram_backend_ids: list[str] = field(default_factory=list)    # boot RAM, in RAM-offset order
    max_ram_below_4g: int | None = None
    mem_path: str = ""
    accel: str = ""
    name: str = ""
    notes: list[str] = field(default_factory=list)

    def backend(self, backend_id: str) -> QemuBackend:
        for b in self.backends:
            if b.id == backend_id:
                return b
        raise BadInput(f"the command line uses memory backend {backend_id!r} but never defines it")


# Options whose value we read; every one of them takes an argument.
_WANTED = {"m", "object", "numa", "machine", "M", "mem-path", "accel", "name", "readconfig"}


def _options(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """(option, value) pairs from QEMU's argv ('-opt' and '--opt' alike).
    Options we do not read take a value if the next word is not an option."""
    out: list[tuple[str, str | None]] = []
    i = 1
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-") or a == "-":
            i += 1              # a bare disk image name
            continue
        opt = a.lstrip("-")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if opt in _WANTED or opt == "enable-kvm":
            if opt == "enable-kvm":
                out.append((opt, None))
                i += 1
            else:
                out.append((opt, nxt))
                i += 2
        elif nxt is not None and not nxt.startswith("-"):
            i += 2
        else:
            i += 1
    return out


def parse_qemu_argv(argv: Sequence[str]) -> QemuConfig:
    cfg = QemuConfig()
    numa: list[tuple[int, str]] = []
    machine_backend = ""
    for opt, val in _options(argv):
        if opt == "enable-kvm":
            cfg.accel = "kvm"
            continue
        if val is None:
            continue
        if opt == "m":
            first, o = split_opts(val)
            size = o.get("size", first)
            if size:
                cfg.ram_bytes = parse_size(size, "m")   # -m counts MiB without a suffix
                cfg.ram_given = True
        elif opt == "object":
            if val.lstrip().startswith("{"):
                try:
                    o = json.loads(val)
                except ValueError:
                    raise BadInput("cannot read a JSON -object in the VMM's command line") from None
                qtype = str(o.pop("qom-type", ""))
            else:
                qtype, o = split_opts(val)
                qtype = o.pop("qom-type", qtype)
            if qtype.startswith("memory-backend-"):
                bid = str(o.pop("id", ""))
                cfg.backends.append(QemuBackend(bid, qtype, parse_size(o.get("size", 0)), o))
        elif opt == "numa":
            kind, o = split_opts(val)
            if (kind or o.get("type", "node")) != "node":
                continue
            nodeid = int(o["nodeid"]) if "nodeid" in o else len(numa)
            if "memdev" in o:
                numa.append((nodeid, o["memdev"]))
            elif "mem" in o:
                cfg.notes.append("legacy -numa node,mem= splits one RAM block; node sizes are not backends")
        elif opt in ("machine", "M"):
            mtype, o = split_opts(val)
            mtype = o.get("type", mtype)
            if mtype and mtype != "help":
                cfg.machine = mtype
            if "memory-backend" in o:
                machine_backend = o["memory-backend"]
            if "max-ram-below-4g" in o:
                cfg.max_ram_below_4g = parse_size(o["max-ram-below-4g"])
            if "accel" in o:
                cfg.accel = o["accel"].split(":")[0]
        elif opt == "accel":
            a, o = split_opts(val)
            cfg.accel = o.get("accel", a)
        elif opt == "mem-path":
            cfg.mem_path = val
        elif opt == "name":
            first, o = split_opts(val)
            cfg.name = o.get("guest", first)
        elif opt == "readconfig":
            cfg.notes.append("-readconfig is not read: backends defined there are unknown (use --qmp)")
    if numa:
        cfg.ram_backend_ids = [b for _, b in sorted(numa)]
        sizes = sum(cfg.backend(b).size_bytes for b in cfg.ram_backend_ids)
        if cfg.ram_given and sizes != cfg.ram_bytes:
            cfg.notes.append(f"-m says {cfg.ram_bytes >> 20} MiB but the NUMA memdevs add up to "
                             f"{sizes >> 20} MiB; using the memdevs")
        cfg.ram_bytes = sizes
    elif machine_backend:
        cfg.ram_backend_ids = [machine_backend]
        cfg.ram_bytes = cfg.backend(machine_backend).size_bytes
    else:
        # QEMU 5.0+: -m alone creates a backend named after the machine's
        # default_ram_id ("pc.ram" on x86), a file backend with -mem-path.
        qtype = "memory-backend-file" if cfg.mem_path else "memory-backend-ram"
        opts = {"mem-path": cfg.mem_path} if cfg.mem_path else {}
        cfg.backends.append(QemuBackend(QEMU_DEFAULT_RAM_ID, qtype, cfg.ram_bytes, opts))
        cfg.ram_backend_ids = [QEMU_DEFAULT_RAM_ID]
    return cfg


_OLD_PC = re.compile(r"^pc-(?:i440fx-)?[01]\.\d+$")     # pc-1.7, pc-i440fx-1.7: no gigabyte_align


def machine_family(machine: str) -> str:
    """'q35' for pc-q35-*/q35, 'pc' for pc/pc-i440fx-*, else the name."""
    if machine == "q35" or machine.startswith("pc-q35"):
        return "q35"
    if machine == "pc" or machine.startswith("pc-"):
        return "pc"
    return machine


def x86_ram_split(machine: str, ram_bytes: int, max_ram_below_4g: int | None = None) -> tuple[int, int]:
    """(below-4G, above-4G) RAM of a QEMU x86 machine, as QEMU 7.2 computes
    it (hw/i386/pc_piix.c pc_init1 and hw/i386/pc_q35.c pc_q35_init).

    pc (i440fx): the limit is max-ram-below-4g (default 3.5 GiB); if RAM
    reaches it, machine types newer than 1.7 lower it to 3 GiB ("gigabyte
    alignment").  q35: 2 GiB below if RAM >= 2.75 GiB, else all of it below
    (up to 2.75 GiB), then capped by max-ram-below-4g.  RAM above the split
    starts at 4 GiB.  (QEMU 7.2 moves it to 1 TiB only for AMD guests whose
    RAM would cross the HyperTransport hole near 1 TiB; not handled.)
    """
    fam = machine_family(machine)
    if fam == "q35":
        lowmem = 0x80000000 if ram_bytes >= 0xB0000000 else 0xB0000000
        limit = max_ram_below_4g or FOUR_GIB
        lowmem = min(lowmem, limit)
    else:
        limit = max_ram_below_4g or 0xE0000000
        lowmem = limit
        if ram_bytes >= limit and not _OLD_PC.match(machine) and lowmem > 0xC0000000:
            lowmem = 0xC0000000
    if ram_bytes >= lowmem:
        return lowmem, ram_bytes - lowmem
    return ram_bytes, 0


def qemu_gpa_plan(cfg: QemuConfig, arch: str = "x86_64") -> list[tuple[int, int, str, int]]:
    """[(gpa_start, size, backend id, offset into the backend)] of boot RAM.

    The machine's RAM is the backends laid end to end (NUMA memdevs in
    node-id order: numa_init_memdev_container); x86 machines then map RAM
    offset [0, below) at GPA 0 and [below, end) at GPA 4 GiB.
    """
    if arch not in ("x86_64", "i386"):
        raise BadInput(f"the guest RAM layout of qemu-system-{arch} is only known through QMP; "
                       "start QEMU with -qmp unix:SOCKET,server=on,wait=off and pass --qmp SOCKET")
    below, _ = x86_ram_split(cfg.machine, cfg.ram_bytes, cfg.max_ram_below_4g)
    plan = []
    off = 0
    for bid in cfg.ram_backend_ids:
        size = cfg.backend(bid).size_bytes
        lo, hi = off, off + size
        if lo < below:
            plan.append((lo, min(hi, below) - lo, bid, 0))
        if hi > below:
            a = max(lo, below)
            plan.append((FOUR_GIB + a - below, hi - a, bid, a - lo))
        off = hi
    return plan


def _path(m: Mapping) -> str:
    return m.path.removesuffix(" (deleted)")


def backend_accepts(b: QemuBackend, m: Mapping) -> bool:
    """Could mapping m hold backend b?  Same size, writable, not code, and
    the kind of memory the backend type allocates."""
    if m.size_bytes != b.size_bytes or m.perms[:2] != "rw" or m.perms[2] == "x":
        return False
    shared = m.perms[3] == "s"
    if b.qom_type == "memory-backend-ram":
        if b.options.get("share", "off") in ("on", "true", "yes", True):
            # shared anonymous memory shows as "/dev/zero (deleted)"
            return shared and (_path(m) in ("/dev/zero", "") or m.path.startswith("[anon_shmem"))
        return not shared and m.path == ""
    if b.qom_type == "memory-backend-memfd":
        return m.path.startswith("/memfd:")
    if b.qom_type == "memory-backend-file":
        want = str(b.options.get("mem-path", ""))
        if not want:
            return bool(m.path)
        # a directory mem-path gets an unlinked temporary file inside it
        return _path(m) == want or _path(m).startswith(want.rstrip("/") + "/")
    return True


def match_backends(backends: Sequence[QemuBackend], maps: Sequence[Mapping]) -> tuple[dict[str, Mapping], list[str]]:
    """The mapping of each backend (by exact size and kind), and notes.

    Two backends of the same size and kind cannot be told apart by their
    mappings; they are assigned in creation order to mappings in
    descending address order, since the kernel places new mappings top-down.
    """
    taken: set[int] = set()
    out: dict[str, Mapping] = {}
    notes: list[str] = []
    for b in backends:
        cands = sorted((m for m in maps if m.start not in taken and backend_accepts(b, m)),
                       key=lambda m: -m.start)
        if not cands:
            continue
        if len(cands) > 1:
            notes.append(f"{len(cands)} mappings could hold backend {b.id!r} ({b.size_bytes >> 20} MiB); "
                         "took the highest (QEMU creates backends in order and mappings go top-down) "
                         "-- pass --qmp to be sure")
        out[b.id] = cands[0]
        taken.add(cands[0].start)
    return out, notes


def layout_from_cmdline(vmm: VmmProcess, maps: Sequence[Mapping]) -> GuestLayout:
    cfg = parse_qemu_argv(vmm.argv)
    plan = qemu_gpa_plan(cfg, vmm.arch or "x86_64")
    used = [cfg.backend(b) for b in cfg.ram_backend_ids]
    found, notes = match_backends(used, maps)
    for b in used:
        if b.id not in found:
            raise BadInput(f"cannot find the guest RAM of QEMU backend {b.id!r} ({b.size_bytes >> 20} MiB, "
                           f"{b.qom_type}) among the mappings of PID {vmm.pid}; pass --qmp SOCKET")
    regions = [GuestRamRegion(gpa, size, found[bid].start + off, bid) for gpa, size, bid, off in plan]
    fam = machine_family(cfg.machine)
    if fam not in ("pc", "q35") and cfg.ram_bytes > 2 * GiB:
        notes.append(f"machine type {cfg.machine!r}: assumed the pc RAM split; pass --qmp to be sure")
    others = [b for b in cfg.backends if b.id not in cfg.ram_backend_ids]
    for b in others:
        notes.append(f"memory backend {b.id!r} ({b.size_bytes >> 20} MiB) is not boot RAM (a DIMM or "
                     "device?); its guest-physical address is known only through --qmp")
    return GuestLayout(vmm.pid, "qemu", tuple(regions), "cmdline", detect_accel(vmm, cfg),
                       cfg.machine, cfg.name, tuple(cfg.notes + notes))


def layout_from_qmp(vmm: VmmProcess, path: str, maps: Sequence[Mapping]) -> GuestLayout:
    from ..kernel.qmp import QmpClient, parse_gpa2hva, parse_mtree_flat
    with QmpClient(path) as q:
        peer = q.peer_pid()
        if peer != vmm.pid and os.path.exists(f"/proc/{peer}"):
            raise BadInput(f"the QMP socket {path} belongs to PID {peer}, not to PID {vmm.pid}")
        memdevs = q.execute("query-memdev") or []
        ids = {m["id"] for m in memdevs if "id" in m}
        flat = parse_mtree_flat(q.hmp("info mtree -f"))
        pieces = []
        for r in flat:
            if r.region not in ids or r.kind not in ("ram", "rom"):
                continue
            hva = parse_gpa2hva(q.hmp(f"gpa2hva {r.start:#x}"))
            if hva is None:
                continue
            pieces.append(GuestRamRegion(r.start, r.end - r.start, hva, r.region))
        machine = ""
        try:
            machine = str(q.execute("qom-get", path="/machine", property="type")).removesuffix("-machine")
        except BadInput:
            pass
    regions: list[GuestRamRegion] = []
    for p in pieces:                 # join ranges split only by priority or type
        last = regions[-1] if regions else None
        if last and last.backend_name == p.backend_name and last.gpa_end == p.gpa_start \
                and last.hva_end == p.hva_start:
            regions[-1] = GuestRamRegion(last.gpa_start, last.size_bytes + p.size_bytes, last.hva_start,
                                         last.backend_name)
        else:
            regions.append(p)
    # A socket whose listener exited (QEMU -daemonize forks after listening on
    # some versions) cannot be checked by PID: check that the RAM is mapped here.
    for r in regions:
        if not any(m.start <= r.hva_start and r.hva_end <= m.end for m in maps):
            raise BadInput(f"the guest RAM that QMP socket {path} describes is not mapped in PID {vmm.pid}; "
                           "is it the socket of another VM?")
    argv_cfg = parse_qemu_argv(vmm.argv)
    return GuestLayout(vmm.pid, "qemu", tuple(regions), "qmp", detect_accel(vmm, argv_cfg),
                       machine, argv_cfg.name, ())
