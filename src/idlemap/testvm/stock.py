"""Debian 12's stock kernels in the test VM (``python -m idlemap.testvm
--kernel stock-6.1`` or ``stock-6.12``).

The stock linux-image-6.1.0-N-amd64 has no CONFIG_IDLE_PAGE_TRACKING and no
DAMON: the kernel on which idlemap's module (kmod/) is the only way to
per-page tracking.  linux-image-6.12.N+deb12-amd64 has DAMON but no
page_idle either.  Unlike the test kernel, their 9p and overlayfs
drivers are modules, so it cannot mount the host's "/" by itself: a small
busybox initramfs insmods them, mounts the root as the kernel would have
(root=, rootflags= from the same command line), and switch_roots into the
same guest-init.sh as the test kernel.  Everything after that is identical.

stock-kernel.sh fetches the packages (once, cached); the initramfs is built
here, next to them, and rebuilt when its inputs change.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import VmError
from . import BUSYBOX, HERE

__all__ = ["SERIES", "build_tree", "stock_dir", "stock_kernel"]

SERIES = {"stock-6.1": "6.1", "stock-6.12": "6.12"}     # --kernel NAME -> stock-kernel.sh --series
SCRIPT = HERE / "stock-kernel.sh"

# PID 1 until the real root is mounted.  Errors go to the kernel log (the
# serial console: run() shows its last lines when no result came back).
INIT = r"""#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
die() {
    echo "<3>idlemap stock initramfs: $*" > /dev/kmsg
    echo b > /proc/sysrq-trigger      # qemu runs with -no-reboot: it exits
    $bb sleep 5
    exit 1
}
for m in $($bb cat /modules.order); do
    $bb insmod /lib/modules/$m.ko || die "insmod $m.ko failed"
done
root= flags= init=/sbin/init
for arg in $($bb cat /proc/cmdline); do
    case $arg in
    --) break ;;
    root=*) root=${arg#root=} ;;
    rootflags=*) flags=${arg#rootflags=} ;;
    init=*) init=${arg#init=} ;;
    esac
done
[ -n "$root" ] || die "no root= on the kernel command line"
# The 9p transport's device shows up as virtio-pci probes it: a few tries.
n=0
until $bb mount -t 9p -o ro,$flags "$root" /newroot 2>/dev/null; do
    n=$((n + 1))
    [ $n -lt 50 ] || die "could not mount $root over 9p ($flags)"
    $bb usleep 100000
done
read -r up _ < /proc/uptime
echo "<5>idlemap stock initramfs: modules loaded, root mounted at ${up}s" > /dev/kmsg
$bb umount /proc
# "$@": what followed "--" on the kernel command line, as init= gets it.
exec $bb switch_root /newroot "$init" "$@"
"""


def stock_dir(series: str = "6.1", fetch: bool = True,
              progress: Callable[[str], None] | None = None) -> Path:
    """The cache directory of Debian's stock kernel of ``series`` ("6.1" or
    "6.12"), fetching the packages the first time (stock-kernel.sh: ~20 s
    and ~100 MB)."""
    if series not in SERIES.values():
        raise VmError(f"no stock kernel series {series!r} (there are {', '.join(SERIES.values())})")
    args = ["--series", series] + ([] if fetch else ["--path"])
    proc = subprocess.Popen(["bash", str(SCRIPT), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    tail: list[str] = []
    for line in proc.stderr:
        tail = (tail + [line.rstrip("\n")])[-20:]
        if progress:
            progress(line.rstrip("\n"))
    out = proc.stdout.read().strip()
    if proc.wait() != 0 or not out:
        last = next((ln for ln in reversed(tail) if ln.strip()), "no output")
        raise VmError(f"the stock {series} kernel is not available ({SCRIPT.name} said: {last.strip()})")
    return Path(out)


def stock_kernel(series: str = "6.1", fetch: bool = True,
                 progress: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(vmlinuz, initramfs) of Debian's stock kernel of ``series``."""
    d = stock_dir(series, fetch, progress)
    return str(d / "vmlinuz"), str(initramfs(d))


def build_tree(d: Path) -> str:
    """The kernel tree to build modules against for the kernel cached in d:
    the headers unpacked there (6.12), else the installed package's (6.1)."""
    if (d / "build" / "Makefile").exists():
        return str(d / "build")
    return f"/usr/src/linux-headers-{(d / 'release').read_text().strip()}"


def initramfs(d: Path) -> Path:
    """The initramfs for the kernel cached in d, built if missing.  Named by a
    hash of what goes in, so a changed init or busybox builds a new one."""
    if not _is_static(BUSYBOX):
        raise VmError(f"the stock kernel's initramfs needs a static busybox at {BUSYBOX} "
                      "(apt-get install busybox-static, or run scripts/setup.sh)")
    order = (d / "modules.order").read_text().split()
    mods = [(m, (d / "modules" / f"{m}.ko").read_bytes()) for m in order]
    bb = Path(BUSYBOX).read_bytes()
    h = hashlib.sha256(INIT.encode() + bb)
    for m, data in mods:
        h.update(m.encode() + data)
    path = d / f"initramfs-{h.hexdigest()[:12]}.cpio"
    if path.exists():
        return path
    entries = [("bin", 0o040755, b"", (0, 0)), ("dev", 0o040755, b"", (0, 0)),
               ("dev/console", 0o020600, b"", (5, 1)), ("dev/null", 0o020666, b"", (1, 3)),
               ("proc", 0o040755, b"", (0, 0)), ("newroot", 0o040755, b"", (0, 0)),
               ("lib", 0o040755, b"", (0, 0)), ("lib/modules", 0o040755, b"", (0, 0)),
               ("bin/busybox", 0o100755, bb, (0, 0)), ("init", 0o100755, INIT.encode(), (0, 0)),
               ("modules.order", 0o100644, "".join(f"{m}\n" for m, _ in mods).encode(), (0, 0))]
    entries += [(f"lib/modules/{m}.ko", 0o100644, data, (0, 0)) for m, data in mods]
    # The cache may be read-only (the VM sees it so): then build in /tmp.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_bytes(newc(entries))
    except OSError:
        path = Path("/tmp") / f"idlemap-stock-{d.name}-{path.name}"
        if path.exists():
            return path
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(newc(entries))
    os.replace(tmp, path)
    return path


def newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio archive in the kernel's initramfs format ("newc"): no cpio
    binary needed.  Entries: (name, mode, data, (rdev major, minor))."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries + [("TRAILER!!!", 0, b"", (0, 0))], 1):
        nm = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nm
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _is_static(path: str) -> bool:
    """An ELF with no PT_INTERP (the initramfs has no dynamic loader)."""
    try:
        data = Path(path).read_bytes()[:1 << 16]
    except OSError:
        return False
    return data[:4] == b"\x7fELF" and b"/ld-linux" not in data and b"ld64.so" not in data
