"""idlemap doctor: what this kernel offers and what each command can do here."""
from __future__ import annotations

import json

from ..backends import why_not
from ..kernel.features import Features, probe

HELP = "show which kernel features idlemap can use here, and what works without the rest"
EXAMPLES = """\
  idlemap doctor
  idlemap doctor --json
"""


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the probe as JSON")


def feature_rows(f: Features) -> list[tuple[str, str, str]]:
    def yn(v):
        return "unknown" if v is None else ("yes" if v else "no")
    return [
        ("page_idle bitmap", yn(f.page_idle), "CONFIG_IDLE_PAGE_TRACKING"),
        ("pagemap", yn(f.pagemap), "CONFIG_PROC_PAGE_MONITOR"),
        ("pagemap frame numbers", yn(f.pagemap_frames), "needs CAP_SYS_ADMIN"),
        ("kpageflags", yn(f.kpageflags), "CONFIG_PROC_PAGE_MONITOR, root"),
        ("clear_refs + smaps", yn(f.clear_refs), "CONFIG_PROC_PAGE_MONITOR"),
        ("soft-dirty", yn(f.soft_dirty), "CONFIG_MEM_SOFT_DIRTY"),
        ("DAMON sysfs", yn(f.damon_sysfs), "CONFIG_DAMON_SYSFS"),
        ("DAMON vaddr", yn(f.damon_vaddr), "CONFIG_DAMON_VADDR"),
        ("DAMON paddr", yn(f.damon_paddr), "CONFIG_DAMON_PADDR"),
        ("a kdamond is running", yn(f.damon_busy), "(not ours: idlemap never touches it)"),
        ("MGLRU", yn(f.lru_gen), "CONFIG_LRU_GEN"),
        ("transparent huge pages", f.thp or "no", "CONFIG_TRANSPARENT_HUGEPAGE"),
        ("NUMA nodes", ",".join(map(str, f.numa_nodes)) or "none", "CONFIG_NUMA"),
        ("swap", f"{f.swap_bytes >> 20} MiB", "CONFIG_SWAP + swapon"),
        ("FUSE", yn(f.fuse), "CONFIG_FUSE_FS"),
    ]


def command_rows(f: Features) -> list[tuple[str, str]]:
    pi = why_not("page_idle", f)
    cr = why_not("clear_refs", f)
    rows = []
    if pi is None:
        rows.append(("wss", "yes, per page (page_idle)"))
    elif cr is None:
        rows.append(("wss", f"yes, per mapping (clear_refs); no per-page detail because {pi}"))
    else:
        rows.append(("wss", f"no: {pi}; {cr}"))
    rows.append(("bitmap", "yes" if pi is None else f"no: {pi}"))
    rows.append(("demo", "yes, here" if pi is None else "yes, inside the test VM (this kernel: " + pi + ")"))
    return rows


def run(args) -> int:
    f = probe()
    if args.json:
        print(json.dumps({"features": f.as_dict(),
                          "commands": {k: v for k, v in command_rows(f)}}, indent=1))
        return 0
    print(f"kernel {f.kernel}, running as {'root' if f.is_root else 'non-root'}"
          + (f", config from {f.config_source}" if f.config_source else ", kernel config not readable"))
    w = max(len(r[0]) for r in feature_rows(f))
    print(f"\n{'FEATURE'.ljust(w)}  {'HERE':8} NEEDS")
    for name, val, need in feature_rows(f):
        print(f"{name.ljust(w)}  {val:8} {need}")
    print("\nCOMMAND  WHAT WORKS HERE")
    for name, what in command_rows(f):
        print(f"{name:8} {what}")
    return 0
