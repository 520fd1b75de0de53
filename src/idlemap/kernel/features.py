"""What this kernel offers, probed once without changing anything.

Probes read files only: no write anywhere, and in particular nothing under
/sys/kernel/mm/damon (a kdamond there may belong to the system).
"""
from __future__ import annotations

import ctypes
import gzip
import os
import platform
from dataclasses import asdict, dataclass, field

from . import page_idle
from .kmod_abi import DEVICE as KMOD_DEVICE
from .kmod_abi import interface_version as _kmod_api
from .syscalls import libc as _libc


@dataclass(frozen=True)
class Features:
    kernel: str
    is_root: bool
    page_idle: bool                 # CONFIG_IDLE_PAGE_TRACKING
    page_idle_writable: bool
    pagemap: bool                   # CONFIG_PROC_PAGE_MONITOR
    pagemap_frames: bool            # frame numbers visible (CAP_SYS_ADMIN)
    kpageflags: bool
    clear_refs: bool
    soft_dirty: bool | None         # CONFIG_MEM_SOFT_DIRTY (None: unknown)
    damon_sysfs: bool               # CONFIG_DAMON_SYSFS
    damon_vaddr: bool | None        # CONFIG_DAMON_VADDR
    damon_paddr: bool | None        # CONFIG_DAMON_PADDR
    damon_busy: bool                # a kdamond is running (not necessarily ours)
    thp: str                        # transparent_hugepage/enabled choice, "" if none
    numa_nodes: list[int] = field(default_factory=list)
    lru_gen: bool | None = None
    swap_bytes: int = 0
    fuse: bool = False
    config_source: str = ""         # where CONFIG_ answers came from
    kmod_loaded: bool = False       # idlemap's module: /dev/idlemap exists (opening it needs root)
    kmod_api: int | None = None     # the loaded module's interface version (None: not loaded, or not root)

    def as_dict(self) -> dict:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def kernel_config() -> tuple[dict[str, str], str]:
    """CONFIG_ values from /proc/config.gz (IKCONFIG_PROC) or /boot/config-*."""
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        cfg = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_"):
                k, _, v = line.partition("=")
                cfg[k] = v
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                cfg[line[2:-11]] = "n"
        return cfg, path
    return {}, ""


class _Sysinfo(ctypes.Structure):
    """struct sysinfo (sysinfo(2)); the tail padded past any libc's size."""
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3),
                ("totalram", ctypes.c_ulong), ("freeram", ctypes.c_ulong), ("sharedram", ctypes.c_ulong),
                ("bufferram", ctypes.c_ulong), ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong),
                ("procs", ctypes.c_ushort), ("pad", ctypes.c_ushort), ("totalhigh", ctypes.c_ulong),
                ("freehigh", ctypes.c_ulong), ("mem_unit", ctypes.c_uint), ("_tail", ctypes.c_char * 64)]


def swap_configured() -> bool:
    """An active swap area exists: without one no page of any process can be
    swapped out, so "no page present" means "no page at all" (the kmod
    backend's check of empty reservations, on every read).  sysinfo(2)'s
    totalswap (the pages of every active area, zram's too) in one system
    call: reading /proc/swaps took ~0.45 ms under TCG, a sixth of a read."""
    info = _Sysinfo()
    if _libc.sysinfo(ctypes.byref(info)) != 0:
        return True         # cannot tell: assume swap, so emptiness is confirmed by smaps
    return info.totalswap > 0


def parse_node_list(text: str) -> list[int]:
    """"0-2,4" -> [0, 1, 2, 4] (the kernel's cpulist/nodelist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _pagemap_frames() -> bool:
    from .pagemap import PFN_MASK, own_page_entry
    entry = own_page_entry()
    return entry is not None and bool(entry & int(PFN_MASK))


def probe() -> Features:
    cfg, cfg_src = kernel_config()

    def conf(name: str) -> bool | None:
        if not cfg:
            return None
        return cfg.get(name, "n") in ("y", "m")

    damon_root = "/sys/kernel/mm/damon/admin/kdamonds"
    damon_sysfs = os.path.isdir(damon_root)
    busy = False
    avail_ops: set[str] = set()
    if damon_sysfs:
        try:
            for d in os.listdir(damon_root):
                if d.isdigit():
                    if (_read(f"{damon_root}/{d}/state") or "").strip() == "on":
                        busy = True
                    ops = _read(f"{damon_root}/{d}/contexts/0/avail_operations")
                    if ops:
                        avail_ops.update(ops.split())
        except OSError:
            pass

    def damon_ops(op: str, config: str) -> bool | None:
        if avail_ops:
            return op in avail_ops
        return conf(config)

    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled") or ""
    thp_choice = thp[thp.find("[") + 1:thp.find("]")] if "[" in thp else ""
    nodes = parse_node_list(_read("/sys/devices/system/node/online") or "")
    swap = 0
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("SwapTotal:"):
            swap = int(line.split()[1]) * 1024
    lru_gen = os.path.exists("/sys/kernel/mm/lru_gen/enabled") or conf("CONFIG_LRU_GEN")
    return Features(
        kernel=platform.release(),
        is_root=os.geteuid() == 0,
        page_idle=page_idle.available(),
        page_idle_writable=os.access(page_idle.PATH, os.W_OK),
        pagemap=os.path.exists("/proc/self/pagemap"),
        pagemap_frames=_pagemap_frames(),
        kpageflags=os.access("/proc/kpageflags", os.R_OK),
        clear_refs=os.path.exists("/proc/self/clear_refs"),
        soft_dirty=conf("CONFIG_MEM_SOFT_DIRTY"),
        damon_sysfs=damon_sysfs,
        damon_vaddr=damon_ops("vaddr", "CONFIG_DAMON_VADDR"),
        damon_paddr=damon_ops("paddr", "CONFIG_DAMON_PADDR"),
        damon_busy=busy,
        thp=thp_choice,
        numa_nodes=nodes,
        lru_gen=bool(lru_gen) if lru_gen is not None else None,
        swap_bytes=swap,
        fuse=os.path.exists("/dev/fuse"),
        config_source=cfg_src,
        kmod_loaded=os.path.exists(KMOD_DEVICE),
        kmod_api=_kmod_api(),
    )
