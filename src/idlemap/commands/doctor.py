"""idlemap doctor: what this kernel offers and what each command can do here."""
from __future__ import annotations

import json

from ..kernel.features import Features, probe

HELP = "show which kernel features idlemap can use here, and what works without the rest"
EXAMPLES = """\
  idlemap doctor            # kernel features, then every command: works here? how? what to do?
  idlemap doctor --json     # the same as JSON (schema idlemap.doctor/1)
"""
SCHEMA = "idlemap.doctor/1"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help=f"print the probe and verdicts as JSON (schema {SCHEMA})")


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


def run(args) -> int:
    from .. import cli
    from ..requirements import WAYS, gather, verdict
    f = probe()
    env = gather(f)
    # Every command cli knows, in its order (a command the table does not
    # know yet is reported as such rather than silently left out).
    verdicts = [verdict(c, env) if c in WAYS else None for c in cli.COMMANDS]
    if args.json:
        print(json.dumps({"schema": SCHEMA, "features": f.as_dict(),
                          "commands": [v.as_dict() if v else {"command": c, "works": None}
                                       for c, v in zip(cli.COMMANDS, verdicts)]}, indent=1))
        return 0
    print(f"kernel {f.kernel}, running as {'root' if f.is_root else 'non-root'}"
          + (f", config from {f.config_source}" if f.config_source else ", kernel config not readable"))
    w = max(len(r[0]) for r in feature_rows(f))
    print(f"\n{'FEATURE'.ljust(w)}  {'HERE':8} NEEDS")
    for name, val, need in feature_rows(f):
        print(f"{name.ljust(w)}  {val:8} {need}")
    cw = max(len(c) for c in cli.COMMANDS)
    print(f"\n{'COMMAND'.ljust(cw)}  {'WORKS':5}  HOW HERE / WHY NOT, AND WHAT TO DO")
    for c, v in zip(cli.COMMANDS, verdicts):
        if v is None:
            print(f"{c.ljust(cw)}  {'?':5}  (not in idlemap's requirements table)")
            continue
        print(f"{c.ljust(cw)}  {'yes' if v.works else 'no':5}  "
              + (v.how if v.works else "; ".join(v.missing)))
        if v.works and v.missing:
            print(f"{''.ljust(cw)}         better, {v.best}: {'; '.join(v.missing)} -- {v.instead}")
        elif not v.works and v.instead:
            print(f"{''.ljust(cw)}         do: {v.instead}")
    return 0
