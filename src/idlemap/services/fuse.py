"""``idlemap mount``: the RFC's per-process files over FUSE (pyfuse3 + trio).

Layout: DIR/<pid>/{idle_bitmap,present_bitmap,idle_pages,wss} for every
live user process (kernel threads have no address space).  The file
semantics live in ``services.procfiles``; access rules in
``services.access``.  This module routes FUSE requests there:

* inodes are computed, not stored: <pid> directory = pid << 3, its files
  pid << 3 | 1..4; entry and attribute timeouts are 0, so directories
  appear and vanish with the processes;
* every file is opened with direct_io: the kernel then passes offsets and
  sizes through unchanged (no page cache), which the RFC's EINVAL rules and
  the stream semantics of idle_pages need;
* the permission check happens at open, with the caller's credentials from
  the request, as /proc/PID/pagemap does it; per-page idle data
  (idle_bitmap, idle_pages, wss with a per-page backend) additionally
  needs what the kernel asks for page_idle, page frames and /dev/idlemap
  (CAP_SYS_ADMIN, root): ``access.may_read_frames``;
* the per-page files come from the backend the command chose (page_idle's
  IdleBitmap or the module's KmodBitmap, ``MountConfig.open_bitmap``); with
  a backend that has no per-page map (clear_refs) they answer EOPNOTSUPP;
* an open file stays bound to the process image it was checked against
  (``procfiles.ImageBinding``, checked before and after every request):
  after an exec it answers EACCES, as /proc's descriptors stop answering;
* work that touches page tables runs in a worker thread, so one long read
  does not stall other callers; requests on one open file are serialised.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FeatureMissing, Unavailable, UsageError
from ..kernel.process import ProcessId

log = logging.getLogger("idlemap.mount")

IDLE_BITMAP, PRESENT_BITMAP, IDLE_PAGES, WSS = 1, 2, 3, 4
FILES: dict[bytes, tuple[int, int]] = {      # name -> (kind, mode)
    b"idle_bitmap": (IDLE_BITMAP, 0o600),
    b"present_bitmap": (PRESENT_BITMAP, 0o400),
    b"idle_pages": (IDLE_PAGES, 0o400),
    b"wss": (WSS, 0o400),
}
NAMES = {kind: name for name, (kind, _) in FILES.items()}
MODES = {kind: mode for kind, mode in FILES.values()}
NEEDS_PER_PAGE = (IDLE_BITMAP, IDLE_PAGES)
ROOT_INODE = 1


def per_page_missing(config: "MountConfig") -> str:
    return (f"idle_bitmap and idle_pages are unavailable with the {config.backend} backend (no per-page "
            f"map{': ' + config.backend_reason if config.backend_reason else ''}); present_bitmap and wss "
            "still work")


@dataclass(frozen=True)
class MountConfig:
    mountpoint: str
    backend: str                 # the chosen backend's name, for the log and the wss file
    backend_reason: str = ""
    allow_other: bool = False
    tlb_flush: str = "auto"
    # From the backend's capabilities: a per-page map (idle_bitmap and
    # idle_pages work), a TLB flush of its own, and how to open its bitmap
    # for one process (Backend.open_bitmap(proc, tlb_flush)).
    per_page: bool = False
    flushes_tlb: bool = False
    open_bitmap: Callable | None = None


def split_inode(inode: int) -> tuple[int, int]:
    """inode -> (pid, kind); kind 0 is the <pid> directory itself."""
    return inode >> 3, inode & 7


def is_user_process(proc: ProcessId) -> bool:
    return not proc.is_kernel_thread


def build_operations(config: MountConfig):
    """The pyfuse3.Operations object.  Its module imports pyfuse3 and trio
    at the top, so it is imported here, late: they are an optional extra."""
    from .fuse_ops import IdlemapFS
    return IdlemapFS(config)


def check_mountpoint(path: str) -> str:
    """The absolute mount point, or a UsageError saying what is wrong with it."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mount point {path} does not exist (create it with mkdir)") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UsageError(f"{path} is a FUSE mount whose daemon has died; "
                             f"run `umount {path}` first") from None
        raise UsageError(f"cannot use {path} as a mount point: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already a mount point")
    return path


def serve(config: MountConfig, ready: Callable[[], None] | None = None) -> None:
    """Mount, call ``ready()``, serve until unmounted or SIGINT/SIGTERM,
    then unmount.  Blocks; returns normally on a clean shutdown."""
    try:
        import pyfuse3
        import trio
    except ImportError:
        raise Unavailable("the mount needs the pyfuse3 library: pip install 'idlemap[fuse]' "
                          "(building it needs apt-get install fuse3 libfuse3-dev pkg-config)") from None
    if not os.path.exists("/dev/fuse"):
        raise FeatureMissing("FUSE device /dev/fuse", "CONFIG_FUSE_FS")
    ops = build_operations(config)
    opts = {"fsname=idlemap", "subtype=idlemap"}
    if config.allow_other:
        opts.add("allow_other")
    # No default_permissions: the kernel would check mode bits only, while
    # access here depends on the caller's relation to the target (ptrace).
    try:
        pyfuse3.init(ops, config.mountpoint, opts)
    except RuntimeError as e:
        raise UsageError(f"cannot mount on {config.mountpoint}: {e}") from None
    log.info("mounted idlemap on %s (backend %s%s)", config.mountpoint, config.backend,
             f": {config.backend_reason}" if config.backend_reason else "")
    if not config.per_page:
        log.warning("%s", per_page_missing(config))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for sig in signals:
                        log.info("%s: unmounting %s", signal.Signals(sig).name, config.mountpoint)
                        nursery.cancel_scope.cancel()
                        return
            nursery.start_soon(on_signal)
            if ready is not None:
                ready()
            await pyfuse3.main()
            # The kernel ended the session (umount DIR): stop the signal watcher.
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception as e:       # already unmounted from outside
            log.debug("close: %s", e)
        log.info("unmounted %s", config.mountpoint)
