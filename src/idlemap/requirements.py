"""What each command needs, as data: one table that `doctor` reads to say,
for every command, whether it works on this machine, why not, and what to
do instead.

A *need* is a fact about the machine (a kernel feature, a privilege, a
Python extra, a program).  Each command lists its ways of working, best
first; a way works when all of its needs are met.  The checks read a
:class:`~idlemap.kernel.features.Features` probe plus a few things that are
not kernel features (Python modules, programs on PATH), so the whole
verdict is a pure function of ``Environment`` and unit-testable.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from .kernel.features import Features


@dataclass(frozen=True)
class Environment:
    """Everything the verdicts depend on, gathered once."""
    features: Features
    python_modules: frozenset[str] = frozenset()   # importable optional extras
    programs: frozenset[str] = frozenset()         # on PATH
    kmod_loaded: bool = False


@dataclass(frozen=True)
class Need:
    name: str                       # what it is, for people
    met: Callable[[Environment], bool]
    config: str = ""                # the kernel option, where it is one
    fix: str = ""                   # what to do when it is missing


def _f(attr: str) -> Callable[[Environment], bool]:
    return lambda e: bool(getattr(e.features, attr))


NEEDS: dict[str, Need] = {n.name: n for n in (
    Need("page_idle bitmap", _f("page_idle"), "CONFIG_IDLE_PAGE_TRACKING",
         "a kernel built with it (no Debian kernel has one; `idlemap demo` shows it in idlemap's test VM)"),
    Need("root", _f("is_root"), "", "run as root (page frames and page_idle are root-only)"),
    Need("pagemap frame numbers", _f("pagemap_frames"), "", "needs CAP_SYS_ADMIN: run as root"),
    Need("clear_refs + smaps", _f("clear_refs"), "CONFIG_PROC_PAGE_MONITOR", "a kernel with it"),
    Need("idlemap module", lambda e: e.kmod_loaded, "",
         "`idlemap kmod build && idlemap kmod load` (docs/kmod.md)"),
    Need("DAMON vaddr", lambda e: bool(e.features.damon_vaddr) and not e.features.damon_busy,
         "CONFIG_DAMON_VADDR + CONFIG_DAMON_SYSFS",
         "a kernel with DAMON (5.15+), and no kdamond of someone else's running"),
    Need("two NUMA nodes", lambda e: len(e.features.numa_nodes) >= 2, "CONFIG_NUMA",
         "a machine (or VM) with at least two memory nodes"),
    Need("swap", lambda e: e.features.swap_bytes > 0, "CONFIG_SWAP",
         "swapon a device or zram; without swap only clean file pages can be paged out "
         "(or use --mode cold)"),
    Need("FUSE", _f("fuse"), "CONFIG_FUSE_FS", "modprobe fuse"),
    Need("pyfuse3", lambda e: "pyfuse3" in e.python_modules, "",
         "pip install 'idlemap[fuse]' (needs libfuse3-dev and pkg-config to build)"),
    Need("prometheus_client", lambda e: "prometheus_client" in e.python_modules, "",
         "pip install 'idlemap[exporter]'"),
    Need("qemu-system-x86_64", lambda e: "qemu-system-x86_64" in e.programs, "",
         "apt-get install qemu-system-x86 busybox-static (scripts/setup.sh does it)"),
    Need("gcc and kernel headers", lambda e: "gcc" in e.programs and os.path.isdir(
        f"/lib/modules/{e.features.kernel}/build"), "",
         "apt-get install gcc make linux-headers-$(uname -r)"),
)}

# Per command: its ways of working, best first: (what you get, [need names]).
# An empty list of needs: works everywhere.
WAYS: dict[str, list[tuple[str, list[str]]]] = {
    "wss": [("per page, TLB-flushed in the kernel (--backend kmod)", ["idlemap module", "root"]),
            ("per page (page_idle)", ["page_idle bitmap", "root", "pagemap frame numbers"]),
            ("per mapping, exact bytes (clear_refs)", ["clear_refs + smaps"]),
            ("per region (DAMON, --backend damon)", ["DAMON vaddr", "root"])],
    "bitmap": [("the RFC bitmap per page (page_idle)", ["page_idle bitmap", "root", "pagemap frame numbers"])],
    "record": [("per page (page_idle)", ["page_idle bitmap", "root", "pagemap frame numbers"]),
               ("per mapping (clear_refs)", ["clear_refs + smaps"]),
               ("per region (DAMON, --backend damon)", ["DAMON vaddr", "root"])],
    "report": [("on any record file, offline", [])],
    "hot": [("per page (page_idle)", ["page_idle bitmap", "root", "pagemap frame numbers"]),
            ("by mapping (clear_refs)", ["clear_refs + smaps"])],
    "heatmap": [("per page (page_idle)", ["page_idle bitmap", "root", "pagemap frame numbers"]),
                ("mapping x time (clear_refs)", ["clear_refs + smaps"])],
    "advise": [("savings and promotion rate per idle age, per page (page_idle)",
                ["page_idle bitmap", "root", "pagemap frame numbers"])],
    "reclaim": [("page out cold pages (MADV_PAGEOUT)", ["page_idle bitmap", "root", "pagemap frame numbers",
                                                        "swap"]),
                ("deactivate cold pages only (--mode cold)", ["page_idle bitmap", "root",
                                                              "pagemap frame numbers"])],
    "tier": [("move hot/cold pages between nodes", ["page_idle bitmap", "root", "pagemap frame numbers",
                                                    "two NUMA nodes"])],
    "top": [("every process from one global page_idle pass", ["page_idle bitmap", "root",
                                                               "pagemap frame numbers"]),
            ("per process, per mapping (clear_refs)", ["clear_refs + smaps"])],
    "exporter": [("Prometheus metrics from one global page_idle pass", ["prometheus_client", "page_idle bitmap",
                                                                         "root", "pagemap frame numbers"]),
                 ("Prometheus metrics per process (clear_refs)", ["prometheus_client", "clear_refs + smaps"])],
    "mount": [("every file (idle_bitmap, idle_pages, present_bitmap, wss)", ["FUSE", "pyfuse3", "root",
                                                                              "page_idle bitmap"]),
              ("present_bitmap and wss only (clear_refs)", ["FUSE", "pyfuse3", "root", "clear_refs + smaps"])],
    "vms": [("list VMMs and their guest RAM", [])],
    "doctor": [("this report", [])],
    "demo": [("here, per page", ["page_idle bitmap", "root", "pagemap frame numbers"]),
             ("inside idlemap's test VM (per page, a real 6.1 kernel; built once, ~5 min)",
              ["qemu-system-x86_64", "root"])],
    "kmod": [("build and load the module for this kernel", ["gcc and kernel headers", "root"])],
}


@dataclass(frozen=True)
class Verdict:
    command: str
    works: bool
    how: str                        # the best way that works here ("" if none)
    missing: list[str] = field(default_factory=list)   # what the best way lacks, as sentences
    instead: str = ""               # what to do instead (or to get the best way)
    best: str = ""                  # the best way, when it is not the one that works here

    def as_dict(self) -> dict:
        return {"command": self.command, "works": self.works, "how": self.how,
                "missing": self.missing, "instead": self.instead, "best": self.best}


def _missing(env: Environment, needs: list[str]) -> list[Need]:
    return [NEEDS[n] for n in needs if not NEEDS[n].met(env)]


def _say(n: Need) -> str:
    return f"no {n.name}" + (f" ({n.config})" if n.config else "")


def verdict(command: str, env: Environment) -> Verdict:
    """Does ``command`` work here, how, and what would make it better."""
    ways = WAYS[command]
    best_missing = _missing(env, ways[0][1])
    for how, needs in ways:
        if not _missing(env, needs):
            if how == ways[0][0] or not best_missing:
                return Verdict(command, True, how)
            # Works, but not the best way: say what the best would need.
            return Verdict(command, True, how, [_say(n) for n in best_missing],
                           "; ".join(n.fix for n in best_missing if n.fix), ways[0][0])
    return Verdict(command, False, "", [_say(n) for n in best_missing],
                   "; ".join(n.fix for n in best_missing if n.fix))


def gather(features: Features) -> Environment:
    """The Environment of this machine (reads only)."""
    from .kernel import kmod
    mods = frozenset(m for m in ("pyfuse3", "prometheus_client", "matplotlib", "rich")
                     if importlib.util.find_spec(m) is not None)
    progs = frozenset(p for p in ("qemu-system-x86_64", "gcc", "make") if shutil.which(p))
    return Environment(features, mods, progs, kmod.loaded())
