"""The one feature table, and what each command needs of it.

``FEATURES`` lists every fact about the machine idlemap depends on -- a
kernel feature, a privilege, idlemap's module, a Python extra, a program --
with its CONFIG_ option, the kernel version that brought it, its probe and
the hint that fixes it.  Three things read it and nothing else says the
same:

* backend choice (``backends.choose``): each backend's Capabilities name the
  features it needs (``requires``); a backend runs where they are all met,
  ``--backend auto`` takes the first in rank order, and a refusal is the
  sentence of the first feature missing (:func:`refusal`);
* ``idlemap doctor``: the feature rows, and for every command its ways of
  working (``WAYS``, best first) judged on the same probes (:func:`verdict`);
* the one-sentence errors, with the exit code the feature's kind implies.

Every verdict is a pure function of an :class:`Environment`, so the table
is unit-testable without the machine it describes.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import AccessDenied, FeatureMissing, IdlemapError, Unavailable
from .kernel.features import Features
from .kernel.kmod_abi import API_VERSION, REBUILD


@dataclass(frozen=True)
class Environment:
    """Everything the verdicts depend on, gathered once."""
    features: Features
    python_modules: frozenset[str] = frozenset()   # importable optional extras
    programs: frozenset[str] = frozenset()         # on PATH
    headers: bool = False                          # /lib/modules/$(uname -r)/build exists
    module_refusal: str = ""                       # why this kernel refuses every module ("" if it loads them)


def _yn(v) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


@dataclass(frozen=True)
class Feature:
    name: str                                   # what it is, for people
    probe: Callable[[Environment], bool]        # met here?
    config: str = ""                            # the kernel option(s), where it is one
    since: str = ""                             # the kernel version that brought it
    hint: str = ""                              # what to do when it is missing
    missing: str = ""                           # the refusal clause, when not "this kernel has no NAME (CONFIG_ ...)"
    kind: str = "feature"                       # "feature" (exit 69), "permission" (77)
    value: Callable[[Environment], str] | None = None   # what `doctor` shows (default yes/no)
    kernel: bool = True                         # a fact of the kernel: a row of doctor's FEATURE table

    def met(self, env: Environment) -> bool:
        return bool(self.probe(env))

    def sentence(self) -> str:
        """Why it is missing, in one clause."""
        if self.missing:
            return self.missing
        if self.config:
            return f"this kernel has no {self.name} ({self.config} is not set)"
        return f"no {self.name}"

    def shown(self, env: Environment) -> str:
        return self.value(env) if self.value else _yn(self.probe(env))


def _f(attr: str) -> Callable[[Environment], bool | None]:
    return lambda e: getattr(e.features, attr)


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("idlemap module", _f("kmod_loaded"), "", "6.1",
            "`idlemap kmod build && idlemap kmod load` (docs/kmod.md; tested on 6.1 and 6.12)",
            "the idlemap kernel module is not loaded (`idlemap kmod build` then `idlemap kmod load`)"),
    Feature("idlemap module interface", lambda e: e.features.kmod_api in (None, API_VERSION), "", "",
            REBUILD,
            f"the loaded idlemap module is a build for another idlemap (this one speaks interface "
            f"{API_VERSION}): rebuild and reload it ({REBUILD})", kernel=False,
            value=lambda e: "unknown" if e.features.kmod_api is None else str(e.features.kmod_api)),
    Feature("page_idle bitmap", _f("page_idle"), "CONFIG_IDLE_PAGE_TRACKING", "4.3",
            "a kernel built with it (no Debian kernel has one; `idlemap demo` shows it in idlemap's test VM)"),
    Feature("root", _f("is_root"), "", "", "run as root (page frames, page_idle, /dev/idlemap and DAMON are "
            "root-only)", "it needs root (page frames, page_idle, /dev/idlemap and DAMON are root-only)",
            "permission", kernel=False),
    Feature("pagemap frame numbers", _f("pagemap_frames"), "", "4.2",
            "needs CAP_SYS_ADMIN: run as root", "pagemap hides frame numbers here (needs CAP_SYS_ADMIN)",
            "permission"),
    Feature("pagemap", _f("pagemap"), "CONFIG_PROC_PAGE_MONITOR", "2.6.25"),
    Feature("kpageflags", _f("kpageflags"), "CONFIG_PROC_PAGE_MONITOR", "2.6.25",
            "run as root; without it THP is recognised by its frame layout alone"),
    Feature("clear_refs + smaps", _f("clear_refs"), "CONFIG_PROC_PAGE_MONITOR", "2.6.22", "a kernel with it",
            "this kernel has no /proc/PID/clear_refs (CONFIG_PROC_PAGE_MONITOR is not set)"),
    Feature("soft-dirty", _f("soft_dirty"), "CONFIG_MEM_SOFT_DIRTY", "3.11",
            "without it the user-space TLB flush costs no faults (docs/tlb.md)"),
    Feature("DAMON sysfs", _f("damon_sysfs"), "CONFIG_DAMON_SYSFS", "5.18", "a kernel with DAMON"),
    Feature("DAMON vaddr", lambda e: bool(e.features.damon_vaddr), "CONFIG_DAMON_VADDR", "5.15",
            "a kernel with DAMON (5.15+)", value=lambda e: _yn(e.features.damon_vaddr)),
    Feature("DAMON paddr", _f("damon_paddr"), "CONFIG_DAMON_PADDR", "5.16", value=lambda e: _yn(e.features.damon_paddr)),
    Feature("DAMON free", lambda e: not e.features.damon_busy, "", "",
            "wait until the kdamond someone else started is stopped (idlemap never touches it)",
            "a kdamond idlemap did not start is running (idlemap never touches it)",
            value=lambda e: "yes" if not e.features.damon_busy else "no: busy"),
    Feature("MGLRU", _f("lru_gen"), "CONFIG_LRU_GEN", "6.1", value=lambda e: _yn(e.features.lru_gen)),
    Feature("transparent huge pages", lambda e: bool(e.features.thp), "CONFIG_TRANSPARENT_HUGEPAGE", "2.6.38",
            value=lambda e: e.features.thp or "no"),
    Feature("two NUMA nodes", lambda e: len(e.features.numa_nodes) >= 2, "CONFIG_NUMA", "",
            "a machine (or VM) with at least two memory nodes",
            value=lambda e: ",".join(map(str, e.features.numa_nodes)) or "none"),
    Feature("swap", lambda e: e.features.swap_bytes > 0, "CONFIG_SWAP", "",
            "swapon a device or zram; without swap only clean file pages can be paged out (or use --mode cold)",
            value=lambda e: f"{e.features.swap_bytes >> 20} MiB"),
    Feature("FUSE", _f("fuse"), "CONFIG_FUSE_FS", "2.6.14", "modprobe fuse"),
    Feature("module loading", lambda e: not e.module_refusal, "CONFIG_MODULES", "",
            "a kernel that loads modules (not locked down; modules_disabled 0)",
            value=lambda e: "yes" if not e.module_refusal else f"no: {e.module_refusal}"),
    Feature("gcc and kernel headers", lambda e: "gcc" in e.programs and e.headers, "", "",
            "apt-get install gcc make linux-headers-$(uname -r)", kernel=False),
    Feature("pyfuse3", lambda e: "pyfuse3" in e.python_modules, "", "",
            "pip install 'idlemap[fuse]' (needs libfuse3-dev and pkg-config to build)", kernel=False),
    Feature("prometheus_client", lambda e: "prometheus_client" in e.python_modules, "", "",
            "pip install 'idlemap[exporter]'", kernel=False),
    Feature("qemu-system-x86_64", lambda e: "qemu-system-x86_64" in e.programs, "", "",
            "apt-get install qemu-system-x86 busybox-static (scripts/setup.sh does it)", kernel=False),
)}

KMOD = ["idlemap module", "idlemap module interface", "root"]         # backends/kmod.py requires
PAGE_IDLE = ["page_idle bitmap", "pagemap frame numbers", "root"]     # backends/page_idle.py requires

# Per command: its ways of working, best first: (what you get, [feature names]).
# An empty list of needs: works everywhere.  The per-page ways follow the
# backends' own ``requires`` (kmod first, as `--backend auto` picks).
WAYS: dict[str, list[tuple[str, list[str]]]] = {
    "wss": [("per page, TLB-flushed in the kernel (kmod)", KMOD),
            ("per page (page_idle)", PAGE_IDLE),
            ("per mapping, exact bytes (clear_refs)", ["clear_refs + smaps"]),
            ("per region (DAMON, --backend damon)", ["DAMON sysfs", "DAMON vaddr", "DAMON free", "root"])],
    "bitmap": [("the RFC bitmap per page, TLB-flushed in the kernel (kmod)", KMOD),
               ("the RFC bitmap per page (page_idle)", PAGE_IDLE)],
    "record": [("per page, TLB-flushed in the kernel (kmod)", KMOD),
               ("per page (page_idle)", PAGE_IDLE),
               ("per mapping (clear_refs)", ["clear_refs + smaps"]),
               ("per region (DAMON, --backend damon)", ["DAMON sysfs", "DAMON vaddr", "DAMON free", "root"])],
    "report": [("on any record file, offline", [])],
    "hot": [("per page (kmod)", KMOD), ("per page (page_idle)", PAGE_IDLE),
            ("by mapping (clear_refs)", ["clear_refs + smaps"])],
    "heatmap": [("per page (kmod)", KMOD), ("per page (page_idle)", PAGE_IDLE),
                ("mapping x time (clear_refs)", ["clear_refs + smaps"])],
    "advise": [("savings and promotion rate per idle age, per page (kmod)", KMOD),
               ("savings and promotion rate per idle age, per page (page_idle)", PAGE_IDLE)],
    "reclaim": [("page out cold pages (MADV_PAGEOUT), read by kmod", KMOD + ["swap"]),
                ("page out cold pages (MADV_PAGEOUT), read by page_idle", PAGE_IDLE + ["swap"]),
                ("deactivate cold pages only (--mode cold), read by kmod", KMOD),
                ("deactivate cold pages only (--mode cold), read by page_idle", PAGE_IDLE)],
    "tier": [("move hot/cold pages between nodes, read by kmod", KMOD + ["two NUMA nodes"]),
             ("move hot/cold pages between nodes, read by page_idle", PAGE_IDLE + ["two NUMA nodes"])],
    "top": [("every process per page, one kmod walk each", KMOD),
            ("every process from one global page_idle pass", PAGE_IDLE),
            ("per process, per mapping (clear_refs)", ["clear_refs + smaps"])],
    "exporter": [("Prometheus metrics per page, one kmod walk per process", ["prometheus_client"] + KMOD),
                 ("Prometheus metrics from one global page_idle pass", ["prometheus_client"] + PAGE_IDLE),
                 ("Prometheus metrics per process (clear_refs)", ["prometheus_client", "clear_refs + smaps"])],
    "mount": [("every file (idle_bitmap, idle_pages, present_bitmap, wss) from kmod",
               ["FUSE", "pyfuse3"] + KMOD),
              ("every file (idle_bitmap, idle_pages, present_bitmap, wss) from page_idle",
               ["FUSE", "pyfuse3"] + PAGE_IDLE),
              ("present_bitmap and wss only (clear_refs)", ["FUSE", "pyfuse3", "root", "clear_refs + smaps"])],
    "vms": [("list VMMs and their guest RAM", [])],
    "doctor": [("this report", [])],
    "demo": [("here, per page", PAGE_IDLE),
             ("inside idlemap's test VM (per page, a real 6.1 kernel; built once, ~5 min)",
              ["qemu-system-x86_64", "root"])],
    "kmod": [("build and load the module for this kernel", ["gcc and kernel headers", "module loading", "root"])],
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


def missing(env: Environment, needs) -> list[Feature]:
    """The features of ``needs`` (names) not met here, in order."""
    return [FEATURES[n] for n in needs if not FEATURES[n].met(env)]


def _say(n: Feature) -> str:
    return f"no {n.name}" + (f" ({n.config})" if n.config else "")


def verdict(command: str, env: Environment) -> Verdict:
    """Does ``command`` work here, how, and what would make it better."""
    ways = WAYS[command]
    best_missing = missing(env, ways[0][1])
    for how, needs in ways:
        if not missing(env, needs):
            if how == ways[0][0] or not best_missing:
                return Verdict(command, True, how)
            # Works, but not the best way: say what the best would need.
            return Verdict(command, True, how, [_say(n) for n in best_missing],
                           "; ".join(n.hint for n in best_missing if n.hint), ways[0][0])
    return Verdict(command, False, "", [_say(n) for n in best_missing],
                   "; ".join(n.hint for n in best_missing if n.hint))


# -- refusals: one sentence, the exit code of the feature's kind ---------------------

class NeedsPrivilege(AccessDenied):
    def __init__(self, sentence: str):
        IdlemapError.__init__(self, sentence)


def refusal(feature: Feature, what: str = "", alternative: str = "") -> IdlemapError:
    """The error for ``feature`` missing: ``what`` names who needs it
    ("the page_idle backend"), ``alternative`` what else works."""
    if feature.kind == "permission":
        return NeedsPrivilege(f"{what or 'this'} cannot run here: {feature.sentence()}"
                              + (f"; {alternative}" if alternative else ""))
    if feature.config and not feature.missing:
        return FeatureMissing(feature.name, feature.config, alternative)
    return Unavailable(feature.sentence() + (f"; {alternative}" if alternative else ""))


def combined_refusal(reasons: list[tuple[str, Feature]], what: str, alternative: str = "") -> IdlemapError:
    """One sentence for several backends refused (``reasons``: backend name,
    first missing feature): permission only if every reason is one."""
    text = f"{what}, but " + "; ".join(f"{n}: {f.sentence()}" for n, f in reasons)
    if alternative:
        text += f"; {alternative}"
    if reasons and all(f.kind == "permission" for _, f in reasons):
        return NeedsPrivilege(text)
    return Unavailable(text)


def environment(features: Features) -> Environment:
    """The Environment of the kernel facts alone (what backend choice needs)."""
    return Environment(features)


def gather(features: Features) -> Environment:
    """The Environment of this machine (reads only)."""
    from .kernel import kmod
    mods = frozenset(m for m in ("pyfuse3", "prometheus_client", "matplotlib", "rich")
                     if importlib.util.find_spec(m) is not None)
    progs = frozenset(p for p in ("qemu-system-x86_64", "gcc", "make") if shutil.which(p))
    headers = os.path.isdir(f"/lib/modules/{features.kernel}/build")
    return Environment(features, mods, progs, headers, kmod.refusal_reason())
