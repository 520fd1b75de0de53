"""find_guest_ram(): the most exact layout a VMM process allows (QMP, the
command line, or its mappings)."""
from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import BadInput, UsageError
from ..kernel.maps import Mapping, read_maps
from .layout import FOUR_GIB, GuestLayout, GuestRamRegion, MiB
from .qemu import layout_from_cmdline, layout_from_qmp, parse_size, split_opts
from .vmm import VmmProcess, describe, detect_accel

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
        layout = layout_from_qmp(vmm, qmp, maps)
    elif vmm.kind == "qemu":
        layout = layout_from_cmdline(vmm, maps)
    else:
        layout = _layout_from_mappings(vmm, maps)
    if not layout.regions:
        raise BadInput(f"found no guest RAM in PID {vmm.pid}")
    return layout
