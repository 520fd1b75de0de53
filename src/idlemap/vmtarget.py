"""Virtual machines as targets: a VMM process's guest RAM, by guest-physical address.

A guest's RAM is memory its VMM process (QEMU, Firecracker,
cloud-hypervisor, crosvm) maps; the guest's accesses are accesses to those
host pages.  Under hardware virtualisation they go through EPT/NPT, which
page_idle still sees: its rmap walk ends in mmu_notifier_clear_young(), and
KVM answers with the EPT/NPT accessed bits (docs/vms.md has the 6.1 code
path).  Under TCG they are plain loads and stores of the QEMU process.

This module finds the guest RAM mappings and the guest-physical ->
host-virtual map (:class:`GuestLayout`), and turns the VA-indexed results
of any backend into guest-physical terms (backends/guest.py wraps a backend
with it):

>>> layout = find_guest_ram(pid)                    # or qmp="/run/vm.qmp"
>>> bm = IdleBitmap(pid); bm.mark_idle(layout.hva_ranges()); ...
>>> gm = idle_map_to_gpa(bm.read(layout.hva_ranges()), layout)
>>> idle, present = gm.rfc_words(0, 1 << 30)        # bit i = guest frame i

How the layout is found, most exact first:

1. ``qmp``: QEMU itself says which backends exist (``query-memdev``),
   where each range of them sits in guest-physical memory (``info mtree
   -f``) and at which host address (``gpa2hva``).
2. QEMU's command line (``-m``, ``-object memory-backend-*``, ``-numa
   node,memdev=``, ``-machine memory-backend=,max-ram-below-4g=``), the
   x86 pc/q35 RAM split of QEMU 7.2 (:func:`x86_ram_split`), and the
   mapping of each backend found by its exact size and kind.
3. Other VMMs: the large anonymous or shared RAM mappings, their total size
   from the command line where it can be given there, the first at GPA 0
   and a second (above the 32-bit PCI hole) at 4 GiB.  Heuristic, and not
   tested here: no such VMM runs on our machines.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .analysis.spans import merge_ranges
from .analysis.usage import idle_map_usage
from .errors import BadInput, NoSuchProcess, UsageError
from .kernel.maps import PAGE_SHIFT, Mapping, read_maps
from .kernel.process import cmdline, identify, list_pids
from .records import IdleMap, MappingUsage, Span, WssSample

MiB, GiB = 1 << 20, 1 << 30
FOUR_GIB = 4 * GiB
QEMU_DEFAULT_RAM = 128 * MiB            # pc and q35 default_ram_size
QEMU_DEFAULT_RAM_ID = "pc.ram"          # pc and q35 default_ram_id

VMM_KINDS = ("qemu", "firecracker", "cloud-hypervisor", "crosvm")
_VMM_NAMES = {"firecracker": "firecracker", "cloud-hypervisor": "cloud-hypervisor",
              "crosvm": "crosvm", "qemu-kvm": "qemu"}

__all__ = ["GuestRamRegion", "GuestLayout", "VmmProcess", "find_guest_ram", "list_vmms",
           "gpa_ranges_to_hva", "idle_map_to_gpa", "guest_sample",
           "x86_ram_split", "parse_qemu_argv"]


# -- records -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GuestRamRegion:
    """A run of guest RAM contiguous in both address spaces."""
    gpa_start: int           # first guest-physical byte
    size_bytes: int
    hva_start: int           # where the VMM maps gpa_start
    backend_name: str        # QEMU backend id (pc.ram, mem0...), or the VMM's own label

    @property
    def gpa_end(self) -> int:
        return self.gpa_start + self.size_bytes

    @property
    def hva_end(self) -> int:
        return self.hva_start + self.size_bytes


@dataclass(frozen=True, slots=True)
class GuestLayout:
    """A guest's RAM: guest-physical ranges and where the VMM maps them."""
    pid: int
    vmm: str                             # one of VMM_KINDS
    regions: tuple[GuestRamRegion, ...]  # in guest-physical order
    source: str                          # "qmp", "cmdline" or "mappings" (heuristic)
    accel: str                           # "kvm", "tcg" or "unknown"
    machine: str = ""                    # QEMU machine type, "" elsewhere
    name: str = ""                       # guest name (QEMU -name), "" if none
    notes: tuple[str, ...] = ()          # caveats a user should read

    @property
    def ram_bytes(self) -> int:
        return sum(r.size_bytes for r in self.regions)

    def hva_ranges(self) -> list[tuple[int, int]]:
        """Host VA ranges of all guest RAM, sorted and merged."""
        return merge_ranges((r.hva_start, r.hva_end) for r in self.regions)

    def gpa_to_hva(self, gpa: int) -> int | None:
        for r in self.regions:
            if r.gpa_start <= gpa < r.gpa_end:
                return r.hva_start + gpa - r.gpa_start
        return None

    def hva_to_gpa(self, hva: int) -> int | None:
        for r in self.regions:
            if r.hva_start <= hva < r.hva_end:
                return r.gpa_start + hva - r.hva_start
        return None


@dataclass(frozen=True, slots=True)
class VmmProcess:
    pid: int
    kind: str                 # one of VMM_KINDS
    comm: str
    argv: tuple[str, ...]
    arch: str = ""            # QEMU target (x86_64, aarch64...), "" if unknown


# -- which processes are VMMs --------------------------------------------------

def vmm_kind(argv: Sequence[str], exe: str = "", comm: str = "") -> tuple[str, str] | None:
    """(kind, QEMU target arch) if the program is a VMM we know, else None."""
    # comm is cut to 15 characters: "qemu-system-x86", "cloud-hyperviso"
    names = [(os.path.basename(exe.removesuffix(" (deleted)")), False),
             (os.path.basename(argv[0]) if argv else "", False), (comm, len(comm) == 15)]
    for name, cut in names:
        if not name:
            continue
        if name.startswith("qemu-system-"):
            return "qemu", "" if cut else name[len("qemu-system-"):]
        if name in _VMM_NAMES:
            arch = os.uname().machine if name == "qemu-kvm" else ""
            return _VMM_NAMES[name], arch
        if cut and "cloud-hypervisor".startswith(name):
            return "cloud-hypervisor", ""
    return None


def executable(pid: int) -> str:
    """The path of the process's executable; "" if it cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def describe(pid: int) -> VmmProcess:
    """The VMM behind ``pid``; BadInput if it is not one we know."""
    proc = identify(pid)
    argv = cmdline(pid)
    found = vmm_kind(argv, executable(pid), proc.comm)
    if found is None:
        raise BadInput(f"process {pid} ({proc.comm}) is not a virtual machine monitor idlemap knows "
                       "(QEMU, Firecracker, cloud-hypervisor, crosvm); `idlemap vms` lists them")
    return VmmProcess(pid, found[0], proc.comm, tuple(argv), found[1])


def list_vmms() -> list[VmmProcess]:
    """Every VMM process on the system (those whose command line we can read)."""
    out = []
    for pid in list_pids():
        argv = cmdline(pid)
        if not argv:
            continue            # kernel thread, zombie, or gone
        found = vmm_kind(argv, executable(pid))
        if found is None:
            continue
        try:
            comm = identify(pid).comm
        except NoSuchProcess:
            continue
        out.append(VmmProcess(pid, found[0], comm, tuple(argv), found[1]))
    return out


def detect_accel(vmm: VmmProcess, cfg: "QemuConfig | None" = None) -> str:
    """kvm if the VMM holds a KVM VM file descriptor, tcg for a QEMU that
    holds none.  Without permission to look at its fds: from the command line."""
    if vmm.kind != "qemu":
        return "kvm"             # Firecracker, cloud-hypervisor and crosvm are KVM-only here
    try:
        fds = os.listdir(f"/proc/{vmm.pid}/fd")
        links = []
        for fd in fds:
            try:
                links.append(os.readlink(f"/proc/{vmm.pid}/fd/{fd}"))
            except OSError:
                pass
        return "kvm" if any(link in ("anon_inode:kvm-vm", "/dev/kvm") for link in links) else "tcg"
    except OSError:
        pass
    if cfg is not None and cfg.accel:
        return cfg.accel
    return "unknown"


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


def _layout_from_cmdline(vmm: VmmProcess, maps: Sequence[Mapping]) -> GuestLayout:
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


def _layout_from_qmp(vmm: VmmProcess, path: str, maps: Sequence[Mapping]) -> GuestLayout:
    from .kernel.qmp import QmpClient, parse_gpa2hva, parse_mtree_flat
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


# -- other VMMs: recognised by their mappings -----------------------------------

# Where x86 guest RAM below 4 GiB ends, for the splits these VMMs have used
# (cloud-hypervisor and current Firecracker: 3 GiB; older Firecracker 3.25 GiB).
_LOW_RAM_ENDS = (0xC0000000, 0xD0000000)


def _vmm_ram_size(vmm: VmmProcess) -> int | None:
    argv = list(vmm.argv)

    def value(*names: str) -> str | None:
        for i, a in enumerate(argv):
            for n in names:
                if a == n and i + 1 < len(argv):
                    return argv[i + 1]
                if a.startswith(n + "="):
                    return a[len(n) + 1:]
        return None

    if vmm.kind == "cloud-hypervisor":
        v = value("--memory")
        if v is None:
            return 512 * MiB        # its documented default
        first, o = split_opts(v)
        return parse_size(o.get("size", first or "512M"))
    if vmm.kind == "crosvm":
        v = value("--mem", "-m")
        if v is None:
            return 256 * MiB
        first, o = split_opts(v)
        return parse_size(o.get("size", first), "m")
    if vmm.kind == "firecracker":
        v = value("--config-file")
        if v:
            try:
                with open(v) as f:
                    return int(json.load(f)["machine-config"]["mem_size_mib"]) * MiB
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def _ram_like(m: Mapping) -> bool:
    if m.perms[:2] != "rw" or m.perms[2] == "x" or m.size_bytes < MiB:
        return False
    return m.path == "" or m.perms[3] == "s" or m.kind in ("shmem", "hugetlb")


def _layout_from_mappings(vmm: VmmProcess, maps: Sequence[Mapping]) -> GuestLayout:
    total = _vmm_ram_size(vmm)
    cands = sorted((m for m in maps if _ram_like(m)), key=lambda m: -m.size_bytes)
    notes = ["guest RAM recognised by mapping size (heuristic, untested on this VMM kind)"]
    chosen: list[Mapping] = []
    if total:
        singles = [m for m in cands if m.size_bytes == total]
        if singles:
            chosen = singles[:1]
        else:
            for i, a in enumerate(cands):
                b = next((b for b in cands[i + 1:] if a.size_bytes + b.size_bytes == total), None)
                if b is not None:
                    chosen = [a, b]
                    break
    elif cands:
        chosen = cands[:1]
        notes.append("guest RAM size unknown (not on the command line): took the largest RAM-like mapping")
    if not chosen:
        raise BadInput(f"cannot find the guest RAM of {vmm.kind} PID {vmm.pid}"
                       + (f" ({total >> 20} MiB)" if total else "") + " among its mappings")
    if len(chosen) == 2:
        a, b = chosen
        low = [m for m in chosen if m.size_bytes in _LOW_RAM_ENDS]
        if a.inode and a.inode == b.inode:           # one memfd: file offset = RAM offset
            chosen = sorted(chosen, key=lambda m: m.offset)
        elif len(low) == 1:                          # the part below the 32-bit hole
            chosen = [low[0], b if low[0] is a else a]
        else:
            chosen = sorted(chosen, key=lambda m: -m.start)    # created first, mapped higher
            notes.append("two RAM mappings of the same kind: assumed the first created is at GPA 0")
    regions = [GuestRamRegion(0 if i == 0 else FOUR_GIB, m.size_bytes, m.start, f"{vmm.kind}.ram{i}")
               for i, m in enumerate(chosen)]
    return GuestLayout(vmm.pid, vmm.kind, tuple(regions), "mappings", detect_accel(vmm), "", "",
                       tuple(notes))


# -- the entry point -------------------------------------------------------------

def find_guest_ram(pid: int | VmmProcess, qmp: str | None = None) -> GuestLayout:
    """Guest RAM of VMM ``pid``: guest-physical ranges and their host addresses.

    ``qmp``: path of the VM's QMP unix socket (QEMU only): exact, and the
    only way for machine types or targets whose layout we do not model.
    """
    vmm = pid if isinstance(pid, VmmProcess) else describe(pid)
    maps = read_maps(vmm.pid)
    if qmp:
        if vmm.kind != "qemu":
            raise UsageError(f"--qmp is for QEMU; PID {vmm.pid} is {vmm.kind}")
        layout = _layout_from_qmp(vmm, qmp, maps)
    elif vmm.kind == "qemu":
        layout = _layout_from_cmdline(vmm, maps)
    else:
        layout = _layout_from_mappings(vmm, maps)
    if not layout.regions:
        raise BadInput(f"found no guest RAM in PID {vmm.pid}")
    return layout


# -- guest-physical views of VA-indexed results --------------------------------

def gpa_ranges_to_hva(layout: GuestLayout, ranges: Iterable[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Host VA ranges that back guest-physical ``ranges`` (None: all guest RAM).
    Parts of ``ranges`` that are not guest RAM (MMIO holes) are dropped."""
    if ranges is None:
        return layout.hva_ranges()
    out = []
    for lo, hi in ranges:
        for r in layout.regions:
            a, b = max(lo, r.gpa_start), min(hi, r.gpa_end)
            if a < b:
                out.append((r.hva_start + a - r.gpa_start, r.hva_start + b - r.gpa_start))
    return merge_ranges(out)


def clip_regions(layout: GuestLayout, ranges: Iterable[tuple[int, int]] | None) -> list[GuestRamRegion]:
    """The layout's regions cut to guest-physical ``ranges`` (page-aligned
    outwards), in GPA order; None: all of them."""
    regions = sorted(layout.regions, key=lambda r: r.gpa_start)
    if ranges is None:
        return regions
    out = []
    page = 1 << PAGE_SHIFT
    for r in regions:
        for lo, hi in merge_ranges((lo & ~(page - 1), (hi + page - 1) & ~(page - 1)) for lo, hi in ranges):
            a, b = max(lo, r.gpa_start), min(hi, r.gpa_end)
            if a < b:
                out.append(GuestRamRegion(a, b - a, r.hva_start + a - r.gpa_start, r.backend_name))
    return out


def restrict(layout: GuestLayout, gpa_ranges: Iterable[tuple[int, int]] | None) -> GuestLayout:
    """The same guest with only the RAM inside ``gpa_ranges`` (None: all):
    what a scan limited to guest-physical ranges walks."""
    if gpa_ranges is None:
        return layout
    regions = tuple(clip_regions(layout, gpa_ranges))
    if not regions:
        raise BadInput("the given range(s) hold no guest RAM (`idlemap vms PID` shows where it is)")
    return dataclasses.replace(layout, regions=regions)


def guest_mapping(r: GuestRamRegion) -> Mapping:
    """A stand-in Mapping for one guest RAM region, in guest-physical terms:
    start/end are GPAs, and reports label it ``guest:<backend>``."""
    return Mapping(r.gpa_start, r.gpa_end, "rw-p", 0, "00:00", 0, f"guest:{r.backend_name}", "guest")


def idle_map_to_gpa(m: IdleMap, layout: GuestLayout,
                    gpa_ranges: Iterable[tuple[int, int]] | None = None) -> IdleMap:
    """Re-index a VA-indexed IdleMap of the VMM by guest-physical address.

    The result is an ordinary IdleMap whose spans are guest RAM regions in
    GPA order (``span.start``/``end`` are guest-physical, ``vpns()`` gives
    guest frame numbers, ``rfc_words(lo, hi)`` is the RFC bitmap with bit i
    = guest frame lo/4K + i).  Guest pages the map did not cover read as
    holes (not present).  ``gpa_ranges`` limits the result to those
    guest-physical ranges (default: all guest RAM).
    """
    regions = clip_regions(layout, gpa_ranges)
    n = sum(r.size_bytes >> PAGE_SHIFT for r in regions)
    present = np.zeros(n, dtype=bool)
    idle = np.zeros(n, dtype=bool)
    huge = np.zeros(n, dtype=bool)
    swapped = np.zeros(n, dtype=bool)
    spans = []
    off = 0
    for r in regions:
        spans.append(Span(guest_mapping(r), r.gpa_start, r.gpa_end, off))
        for s in m.spans:
            lo, hi = max(s.start, r.hva_start), min(s.end, r.hva_end)
            if lo >= hi:
                continue
            src = slice(s.offset + ((lo - s.start) >> PAGE_SHIFT), s.offset + ((hi - s.start) >> PAGE_SHIFT))
            d0 = off + ((lo - r.hva_start) >> PAGE_SHIFT)
            dst = slice(d0, d0 + ((hi - lo) >> PAGE_SHIFT))
            present[dst] = m.present[src]
            idle[dst] = m.idle[src]
            huge[dst] = m.huge[src]
            swapped[dst] = m.swapped[src]
        off += r.size_bytes >> PAGE_SHIFT
    return IdleMap(m.pid, spans, present, idle, huge, swapped, m.time_s, m.window_s)


def guest_sample(s: WssSample, layout: GuestLayout, pss_bytes: int | None = None) -> WssSample:
    """A VMM's WssSample restricted to guest RAM and told in guest terms.

    Page-granular samples (with an idle_map) become per-region totals over
    a GPA-indexed map; mapping-granular ones (clear_refs) keep the VMM's
    per-mapping totals, one row per guest RAM mapping, labelled by backend.
    """
    if s.idle_map is not None:
        gm = idle_map_to_gpa(s.idle_map, layout)
        by_map = idle_map_usage(gm)
        rss = int(np.count_nonzero(gm.present)) << PAGE_SHIFT
        acc = int(np.count_nonzero(gm.accessed)) << PAGE_SHIFT
        return WssSample(pid=s.pid, backend=s.backend, time_s=s.time_s, window_s=s.window_s,
                         rss_bytes=rss, pss_bytes=-1 if pss_bytes is None else pss_bytes,
                         accessed_bytes=acc, by_mapping=by_map, idle_map=gm, scan_s=s.scan_s)
    rows = []
    for u in s.by_mapping:
        inside = [r for r in layout.regions if r.hva_start < u.mapping.end and u.mapping.start < r.hva_end]
        if not inside:
            continue
        gm = Mapping(min(r.gpa_start for r in inside), max(r.gpa_end for r in inside), u.mapping.perms, 0,
                     "00:00", 0, "guest:" + "+".join(sorted({r.backend_name for r in inside})), "guest")
        rows.append(MappingUsage(gm, u.rss_bytes, u.pss_bytes, u.accessed_bytes, u.idle_bytes, u.swap_bytes))
    return WssSample(pid=s.pid, backend=s.backend, time_s=s.time_s, window_s=s.window_s,
                     rss_bytes=sum(u.rss_bytes for u in rows),
                     pss_bytes=sum(u.pss_bytes for u in rows) if all(u.pss_bytes >= 0 for u in rows) else -1,
                     accessed_bytes=sum(u.accessed_bytes for u in rows), by_mapping=rows,
                     idle_map=None, scan_s=s.scan_s)


def layout_summary(layout: GuestLayout) -> str:
    """One sentence for headers: what the guest is and where its RAM is from."""
    how = {"qmp": "from QMP", "cmdline": "from the command line",
           "mappings": "recognised by mapping size"}[layout.source]
    what = f"{layout.vmm}" + (f" {layout.machine}" if layout.machine else "")
    name = f" guest {layout.name!r}" if layout.name else ""
    return (f"{what}{name}, {layout.accel}: {layout.ram_bytes / MiB:.0f} MiB guest RAM in "
            f"{len(layout.regions)} region{'s' * (len(layout.regions) != 1)} ({how})")


def layout_json(layout: GuestLayout) -> dict:
    return {"pid": layout.pid, "vmm": layout.vmm, "source": layout.source, "accel": layout.accel,
            "machine": layout.machine, "name": layout.name, "ram_bytes": layout.ram_bytes,
            "regions": [{"gpa_start": f"{r.gpa_start:#x}", "gpa_end": f"{r.gpa_end:#x}",
                         "size_bytes": r.size_bytes, "hva_start": f"{r.hva_start:#x}",
                         "backend": r.backend_name} for r in layout.regions],
            "notes": list(layout.notes)}


def hot_gpa_ranges(gm: IdleMap) -> list[tuple[int, int]]:
    """Guest-physical [start, end) runs of accessed pages of a GPA-indexed map."""
    out = []
    acc = gm.accessed
    for s in gm.spans:
        a = acc[gm.span_slice(s)].astype(np.int8)
        if not a.any():
            continue
        edges = np.flatnonzero(np.diff(np.concatenate(([0], a, [0]))))
        for lo, hi in zip(edges[::2], edges[1::2]):
            out.append((s.start + (int(lo) << PAGE_SHIFT), s.start + (int(hi) << PAGE_SHIFT)))
    return out

