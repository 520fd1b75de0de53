"""Backends behind one interface, and the choice between them."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FeatureMissing, UsageError
from ..kernel.features import Features, probe
from .base import Backend, Capabilities
from .clear_refs import ClearRefsBackend
from .damon import DamonBackend
from .damon import unavailable as damon_unavailable
from .kmod import KmodBackend
from .page_idle import PageIdleBackend

BACKENDS: dict[str, type[Backend]] = {
    "page_idle": PageIdleBackend,
    "clear_refs": ClearRefsBackend,
    "damon": DamonBackend,
    "kmod": KmodBackend,
}

PER_PAGE_HINT = ("`--backend clear_refs` gives exact totals per mapping, and `idlemap demo` "
                 "shows per-page tracking in the test VM")


@dataclass(frozen=True)
class Choice:
    cls: type[Backend]
    reason: str


def why_not(name: str, f: Features) -> str | None:
    """None if backend ``name`` can run here, else the one-sentence reason."""
    if name == "page_idle":
        if not f.page_idle:
            return "this kernel has no page_idle bitmap (CONFIG_IDLE_PAGE_TRACKING is not set)"
        if not f.is_root or not f.page_idle_writable:
            return "page_idle needs root (the bitmap and pagemap frame numbers are root-only)"
        if not f.pagemap_frames:
            return "pagemap hides frame numbers here (needs CAP_SYS_ADMIN)"
        return None
    if name == "clear_refs":
        if not f.clear_refs:
            return "this kernel has no /proc/PID/clear_refs (CONFIG_PROC_PAGE_MONITOR is not set)"
        return None
    if name == "kmod":
        from ..kernel import kmod
        if not kmod.available():
            return kmod.NOT_LOADED
        if not f.is_root:
            return "the idlemap module's device (/dev/idlemap) needs root (CAP_SYS_ADMIN)"
        return None
    if name == "damon":
        err = damon_unavailable(f)      # reads only; a kdamond not ours comes first
        return str(err) if err else None
    return f"unknown backend {name!r}"


def choose(name: str = "auto", need_per_page: bool = False, features: Features | None = None) -> Choice:
    f = features or probe()
    if name != "auto":
        if name not in BACKENDS:
            raise UsageError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
        reason = why_not(name, f)
        if reason:
            if name == "page_idle" and not f.page_idle:
                raise FeatureMissing("page_idle bitmap", "CONFIG_IDLE_PAGE_TRACKING", PER_PAGE_HINT)
            if name == "damon":
                raise damon_unavailable(f) or UsageError(f"cannot use backend {name}: {reason}")
            raise UsageError(f"cannot use backend {name}: {reason}")
        if need_per_page and not BACKENDS[name].caps.per_page:
            raise UsageError(f"backend {name} has no per-page map; this command needs page_idle")
        return Choice(BACKENDS[name], "chosen with --backend")
    no_pi = why_not("page_idle", f)
    if no_pi is None:
        return Choice(PageIdleBackend, "page_idle is available: exact per-page tracking")
    if need_per_page:
        if not f.page_idle:
            raise FeatureMissing("page_idle bitmap", "CONFIG_IDLE_PAGE_TRACKING",
                                 "this command needs per-page tracking; " + PER_PAGE_HINT)
        raise UsageError(f"this command needs per-page tracking, but {no_pi}")
    no_cr = why_not("clear_refs", f)
    if no_cr is None:
        return Choice(ClearRefsBackend, f"clear_refs, because {no_pi}")
    raise UsageError(f"no backend can run here: {no_pi}; {no_cr}")


__all__ = ["Backend", "Capabilities", "BACKENDS", "Choice", "choose", "why_not"]
