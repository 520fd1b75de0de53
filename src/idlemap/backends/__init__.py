"""Backends behind one interface, and the choice between them.

The choice is data: each backend's Capabilities say what it needs (names in
requirements.FEATURES, the one feature table), whether it gives a per-page
map, whether it sees a KVM guest's accesses, and its place in ``--backend
auto``'s order.  :func:`choose` reads only those fields.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BlindToGuest, UsageError
from ..kernel.features import Features, probe
from ..kernel.tasks import list_tasks
from ..requirements import FEATURES, Feature, combined_refusal, environment, refusal
from .base import Backend, Capabilities
from .clear_refs import ClearRefsBackend
from .damon import DamonBackend
from .kmod import KmodBackend
from .page_idle import PageIdleBackend
from .system import ClearRefsSystemScanner, PageIdleSystemScanner, Selection, SystemScanner
from .system_kmod import KmodSystemScanner

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (KmodBackend, PageIdleBackend, ClearRefsBackend, DamonBackend)}

DEMO_HINT = "`idlemap demo` shows per-page tracking in the test VM"
# Only for a command that can run per mapping: one that needs a page map
# (bitmap, reclaim, tier, advise) has no --backend clear_refs to offer.
PER_MAPPING_HINT = f"`--backend clear_refs` gives exact totals per mapping, and {DEMO_HINT}"
GUEST_BLIND = "cannot see a KVM guest's accesses (EPT accessed bits)"


@dataclass(frozen=True)
class Choice:
    cls: type[Backend]
    reason: str
    auto: bool = False          # picked by --backend auto (the reason says why this one)
    # Auto took a backend blind to the target's KVM guest because none that
    # sees it runs here: why those could not (one clause), else "".
    guest_blind: str = ""


def _missing(cls: type[Backend], f: Features) -> Feature | Exception | None:
    """The first thing ``cls`` lacks here: its own probe's error, or the
    first feature of the table it needs that is not met; None if it runs."""
    caps = cls.caps
    if caps.probe is not None:
        err = caps.probe(f)
        if err is not None:
            return err
    env = environment(f)
    for name in caps.needs():
        if not FEATURES[name].met(env):
            return FEATURES[name]
    return None


def _sentence(m: Feature | Exception) -> str:
    return m.sentence() if isinstance(m, Feature) else str(m)


def why_not(name: str | type[Backend], f: Features) -> str | None:
    """None if the backend can run here, else the one-sentence reason."""
    cls = BACKENDS.get(name) if isinstance(name, str) else name
    if cls is None:
        return f"unknown backend {name!r}"
    m = _missing(cls, f)
    return None if m is None else _sentence(m)


def _refuse(cls: type[Backend], m: Feature | Exception, alternative: str = "") -> Exception:
    if isinstance(m, Exception):
        return m
    return refusal(m, f"the {cls.name} backend", alternative)


def refusal_for(name: str, alternative: str = "", features: Features | None = None) -> Exception | None:
    """The error saying why backend ``name`` cannot run here (a missing
    kernel feature: exit 69; a permission: 77), or None if it can."""
    cls = BACKENDS[name]
    m = _missing(cls, features or probe())
    return None if m is None else _refuse(cls, m, alternative)


def per_page_names() -> list[str]:
    return [n for n, c in BACKENDS.items() if c.caps.per_page]


def auto_order() -> list[type[Backend]]:
    return sorted((c for c in BACKENDS.values() if c.caps.auto_rank is not None), key=lambda c: c.caps.auto_rank)


def choose(name: str = "auto", need_per_page: bool = False, features: Features | None = None,
           guest: bool = False) -> Choice:
    """The backend for ``name`` (auto: the first in rank order that runs
    here), with the reason in one sentence.

    ``need_per_page``: the command needs an IdleMap.  ``guest``: the
    target's memory is also accessed by a KVM guest (its VMM), so a backend
    that cannot see those accesses is passed over while one that can runs.
    """
    f = features or probe()
    if name != "auto":
        cls = BACKENDS.get(name)
        if cls is None:
            raise UsageError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
        if need_per_page and not cls.caps.per_page:
            raise UsageError(f"backend {name} has no per-page map; this command needs one of "
                             f"{', '.join(per_page_names())}")
        m = _missing(cls, f)
        if m is not None:
            raise _refuse(cls, m, "" if not cls.caps.per_page else DEMO_HINT if need_per_page else PER_MAPPING_HINT)
        return Choice(cls, "chosen with --backend")
    passed: list[tuple[type[Backend], str]] = []         # why each better one was not taken
    refused: list[tuple[str, Feature]] = []
    blind: list[type[Backend]] = []
    for cls in auto_order():
        if need_per_page and not cls.caps.per_page:
            continue
        m = _missing(cls, f)
        if m is not None:
            passed.append((cls, f"{cls.name}: {_sentence(m)}"))
            if isinstance(m, Feature):
                refused.append((cls.name, m))
            continue
        if guest and not cls.caps.sees_guest_accesses:
            blind.append(cls)
            passed.append((cls, f"{cls.name} {GUEST_BLIND}"))
            continue
        return Choice(cls, _auto_reason(cls, passed), auto=True)
    if blind:
        # Nothing that sees the guest runs here: the best of the others,
        # saying what it misses.
        cls = blind[0]
        why = "; ".join(r for c, r in passed if c is not cls and c not in blind)
        return Choice(cls, f"{cls.name}, though it {GUEST_BLIND}: {why}", auto=True,
                      guest_blind=why or "no backend that sees them runs here")
    what = "this command needs per-page tracking" if need_per_page else "no backend can run here"
    if need_per_page:
        raise combined_refusal(refused, what, DEMO_HINT)
    raise combined_refusal(refused, what)


def _auto_reason(cls: type[Backend], passed: list[tuple[type[Backend], str]]) -> str:
    if not passed:
        return cls.caps.auto_why or f"{cls.name}: {cls.caps.summary}"
    return f"{cls.name}, because " + "; ".join(r for _, r in passed)


def options_for(cls, given: dict[str, tuple[str, object]]) -> dict:
    """The constructor keywords of ``cls`` from ``given`` (keyword -> (the
    option's flag, its value or None when not given)): one the backend does
    not take is a usage error naming the backends that do."""
    kw = {}
    for key, (flag, value) in given.items():
        if value is None:
            continue                    # not given: the backend's own default
        if key in cls.caps.options:
            kw[key] = value
        else:
            among = SYSTEM_BACKENDS if cls in SYSTEM_BACKENDS.values() else BACKENDS
            takers = [n for n, c in among.items() if key in c.caps.options]
            raise UsageError(f"{flag} goes with the {' or '.join(takers)} backend, not {cls.name}")
    return kw


def is_kvm_guest(pid: int) -> bool:
    """Is ``pid`` running a KVM guest (whose accesses go through EPT/NPT
    accessed bits)?  Any process holding a KVM VM file descriptor is, whatever
    its name: kvmtool, gVisor's KVM platform and a hand-written VMM are as
    blind to the host's page tables as QEMU.  Where the fds cannot be read,
    a VMM idlemap knows is judged by its command line.  Reads only; False if
    it cannot tell."""
    from ..errors import IdlemapError
    from ..kernel.process import cmdline
    from ..vm import describe, executable, vmm_kind
    from ..vm.vmm import detect_accel, kvm_fds
    held = kvm_fds(pid)
    if held is not None:
        return "vm" in held
    try:
        if vmm_kind(cmdline(pid), executable(pid)) is None:
            return False
        return detect_accel(describe(pid)) == "kvm"
    except (IdlemapError, OSError):      # gone or unreadable: its own reads will say so
        return False


def choose_for(name: str, pid: int, need_per_page: bool = False, features: Features | None = None) -> Choice:
    """:func:`choose` for one target process (auto passes over backends
    blind to a KVM guest's accesses when the target is its VMM)."""
    return choose(name, need_per_page, features, guest=name == "auto" and is_kvm_guest(pid))


def refuse_blind_action(pid: int, choice: Choice) -> None:
    """Refuse to act (page out, move) on a KVM guest's VMM read by a backend
    blind to the guest.  The guest's working set reads idle there (measured:
    tests/system/test_kvm_guest_vm.py), so reclaim would page it out and
    tiering demote it -- the harm the TLB rules exist to prevent."""
    cls = choice.cls
    if cls.caps.sees_guest_accesses or not is_kvm_guest(pid):
        return
    seeing = [c for c in auto_order() if c.caps.per_page and c.caps.sees_guest_accesses]
    # Why those cannot run here: auto said so already; a backend asked for
    # by name (a cgroup's members share one) is asked now.
    blind_why = choice.guest_blind
    if not blind_why:
        f = probe()
        blind_why = "; ".join(f"{c.name}: {w}" for c in seeing if (w := why_not(c, f)) is not None)
    why = f", and here {blind_why}" if blind_why else ""
    seeing = " or ".join(c.name for c in seeing)
    raise BlindToGuest(f"process {pid} runs a KVM guest and the {cls.name} backend {GUEST_BLIND}, so its "
                       f"readings would show the guest's working set as idle: refusing to page out or move "
                       f"this memory (only {seeing} sees a guest's accesses{why})")


# -- the system pass (top, exporter): one scanner per backend ---------------------
SYSTEM_BACKENDS: dict[str, type[SystemScanner]] = {
    cls.name: cls for cls in (KmodSystemScanner, PageIdleSystemScanner, ClearRefsSystemScanner)}


@dataclass(frozen=True)
class SystemChoice:
    cls: type[SystemScanner]
    reason: str


def kvm_guest_among(selection: Selection) -> bool:
    """Is a process running a KVM guest among those ``selection`` covers?
    Every selected process is asked (a readdir of its fds), not only the
    VMMs idlemap knows by name: see :func:`is_kvm_guest`."""
    return any(is_kvm_guest(t.pid) for t in selection.apply(list_tasks()))


def choose_system(name: str = "auto", features: Features | None = None,
                  selection: Selection | None = None, guests: bool = False) -> SystemChoice:
    """The system scanner for ``name`` (auto: as :func:`choose`, among
    the backends that have one), with the reason in one sentence.  Auto
    passes over a backend blind to KVM guests' accesses if ``guests`` (rows
    per VM were asked for) or a KVM guest's VMM is in ``selection``."""
    f = features or probe()
    guest = name == "auto" and (guests or (selection is not None and kvm_guest_among(selection)))
    c = choose(name, features=f, guest=guest)
    return SystemChoice(SYSTEM_BACKENDS[c.cls.name], c.reason)

__all__ = ["Backend", "Capabilities", "BACKENDS", "SYSTEM_BACKENDS", "Choice", "SystemChoice", "choose",
           "choose_for", "choose_system", "is_kvm_guest", "options_for", "per_page_names", "refuse_blind_action",
           "refusal_for", "why_not"]
