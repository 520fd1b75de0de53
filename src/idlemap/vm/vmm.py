"""Which processes are VMMs (QEMU, Firecracker, cloud-hypervisor, crosvm)
and whether they run their guest under KVM or TCG."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NoSuchProcess, UsageError
from ..kernel.process import cmdline, identify, list_pids

if TYPE_CHECKING:
    from .qemu import QemuConfig


VMM_KINDS = ("qemu", "firecracker", "cloud-hypervisor", "crosvm")
_VMM_NAMES = {"firecracker": "firecracker", "cloud-hypervisor": "cloud-hypervisor",
              "crosvm": "crosvm", "qemu-kvm": "qemu"}

__all__ = ["VMM_KINDS", "VmmProcess", "vmm_kind", "executable", "describe", "list_vmms", "detect_accel",
           "kvm_fds"]


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
    """The VMM behind ``pid``; a usage error (a wrong target, exit 2) if it is not one we know."""
    proc = identify(pid)
    argv = cmdline(pid)
    found = vmm_kind(argv, executable(pid), proc.comm)
    if found is None:
        raise UsageError(f"process {pid} ({proc.comm}) is not a virtual machine monitor idlemap knows "
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


def kvm_fds(pid: int) -> set[str] | None:
    """Which of KVM's files ``pid`` holds open: "vm" (a KVM virtual
    machine, anon_inode:kvm-vm) and "dev" (/dev/kvm); None if its fds
    cannot be read (not ours and not root, or gone)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    held = set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue                 # closed since the listing
        if link == "anon_inode:kvm-vm":
            held.add("vm")
        elif link == "/dev/kvm":
            held.add("dev")
    return held


def detect_accel(vmm: VmmProcess, cfg: "QemuConfig | None" = None) -> str:
    """kvm if the VMM holds a KVM VM file descriptor, tcg for a QEMU that
    holds none.  Without permission to look at its fds: from the command line."""
    if vmm.kind != "qemu":
        return "kvm"             # Firecracker, cloud-hypervisor and crosvm are KVM-only here
    held = kvm_fds(vmm.pid)
    if held is not None:
        return "kvm" if held else "tcg"
    if cfg is not None and cfg.accel:
        return cfg.accel
    return "unknown"
