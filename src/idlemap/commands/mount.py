"""idlemap mount: the RFC's /proc/PID/idle_bitmap (and idle_pages) for every process, over FUSE."""
from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys

from .. import backends, outputs
from ..errors import AccessDenied, IdlemapError
from . import add_tlb_arguments

HELP = "mount a FUSE file system with DIR/<pid>/idle_bitmap, present_bitmap, idle_pages and wss"
EXAMPLES = """\
  mkdir -p /mnt/idle && idlemap mount /mnt/idle           # returns once mounted
  idlemap mount /mnt/idle --foreground --allow-other      # serve in this terminal; Ctrl-C unmounts
  cat /mnt/idle/1234/wss                                  # one-line working-set summary
  umount /mnt/idle                                        # or: kill the daemon (SIGTERM)
Files (docs/fuse.md): idle_bitmap is the RFC's bitmap -- u64 words, 64 pages
per word, byte offset b covers virtual pages from b*8, 1 = idle (holes read
idle); writing 1 bits marks those pages idle; offsets and sizes must be
multiples of 8.  present_bitmap tells holes from idle pages.  idle_pages is
the run-length stream of docs/idle_pages.md.
Backend: auto takes idlemap's module (kmod) where it is loaded, else
page_idle, else clear_refs (then only present_bitmap and wss work).
Access (docs/fuse.md): per-page idle data -- idle_bitmap, idle_pages, and wss
with a per-page backend -- only for root (CAP_SYS_ADMIN), as the kernel keeps
page_idle and /dev/idlemap: frames of shared files would tell other users' accesses.  Other
users get present_bitmap (and wss with clear_refs) of processes they may
ptrace, as /proc/PID/pagemap.  An open file is bound to the program the
process ran when it was opened: after an exec it answers EACCES.
"""
SCHEMA = "idlemap.mount/1"
# Per-page backends serve every file; a per-mapping one present_bitmap and
# wss (the wss file reads smaps itself).  DAMON's regions serve none.
MOUNT_BACKENDS = [n for n, c in backends.BACKENDS.items() if c.caps.per_page or c.caps.granularity == "mapping"]


def add_arguments(p) -> None:
    p.add_argument("mountpoint", metavar="DIR", type=_mountpoint_arg, help="an existing, empty directory")
    p.add_argument("--backend", default="auto", choices=["auto", *MOUNT_BACKENDS],
                   help="auto (default): kmod if idlemap's module is loaded, else page_idle if the kernel "
                        "has it; with clear_refs only present_bitmap and wss work")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in: they get present_bitmap (and wss with clear_refs) of "
                        "processes they may ptrace; per-page idle data stays root-only")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, log to stderr; Ctrl-C or SIGTERM unmounts")
    add_tlb_arguments(p)
    p.add_argument("--log", metavar="FILE", type=outputs.arg("the log"),
                   help="append the log to this regular file (default: stderr in the foreground, "
                                                  "syslog in the background)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every failed request")
    p.add_argument("--json", action="store_true", help=f"print the 'mounted' line as JSON (schema {SCHEMA})")


def _mountpoint_arg(text: str) -> str:
    # The help promises an empty directory: "" would mount over the
    # current directory, and a non-empty one would hide its files.
    if not text:
        raise argparse.ArgumentTypeError("the mount point is empty; give an existing, empty directory")
    try:
        if os.path.ismount(text):
            return text          # check_mountpoint says "already a mount point"
        entries = os.listdir(text)
    except OSError:
        return text              # missing, not a directory, a dead mount: check_mountpoint says which
    if entries:
        raise argparse.ArgumentTypeError(f"{text} is not empty ({len(entries)} entries); "
                                         "give an existing, empty directory")
    return text


def _logging(args, background: bool) -> None:
    root = logging.getLogger("idlemap")
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.log:
        try:
            h: logging.Handler = logging.FileHandler(args.log)
        except OSError as e:     # checked at parsing; this is a permission or read-only file system
            raise outputs._error(e, args.log, "the log") from None
    elif not background:
        h = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        h = logging.handlers.SysLogHandler("/dev/log")
    else:
        h = logging.NullHandler()
    h.setFormatter(logging.Formatter("idlemap mount[%(process)d]: %(message)s"))
    root.addHandler(h)


def _ready_line(args, config, pid: int) -> str:
    if args.json:
        return json.dumps({"schema": SCHEMA, "mountpoint": config.mountpoint, "pid": pid,
                           "backend": config.backend, "reason": config.backend_reason,
                           "allow_other": config.allow_other}, separators=(",", ":"))
    return (f"idlemap: mounted on {config.mountpoint} (daemon PID {pid}, backend {config.backend}: "
            f"{config.backend_reason}); unmount with `umount {config.mountpoint}`")


def run(args) -> int:
    from ..services.fuse import MountConfig, check_mountpoint, serve
    if os.geteuid() != 0:
        raise AccessDenied("/dev/fuse and other processes' page tables",
                           "idlemap mount runs as root: it reads page frames and page_idle for its callers")
    mountpoint = check_mountpoint(args.mountpoint)
    choice = backends.choose(args.backend)
    caps = choice.cls.caps
    config = MountConfig(mountpoint, choice.cls.name, choice.reason, args.allow_other, args.tlb_flush,
                         per_page=caps.per_page, flushes_tlb=caps.flushes_tlb,
                         open_bitmap=_open_bitmap(choice, args.tlb_flush) if caps.per_page else None)
    if args.foreground:
        _logging(args, background=False)

        def ready() -> None:
            print(_ready_line(args, config, os.getpid()), flush=True)
        try:
            serve(config, ready)
        except KeyboardInterrupt:
            pass
        return 0
    return _daemonize(args, config, serve)


def _open_bitmap(choice, tlb_mode: str):
    """How the mount opens a process's bitmap.  One backend serves every
    process, except that where auto took one blind to a KVM guest's
    accesses (kmod), a KVM guest's VMM gets the per-page backend auto would
    take for it (page_idle, where it runs), with its own TLB policy."""
    cls = choice.cls
    if not choice.auto or cls.caps.sees_guest_accesses:
        return cls.open_bitmap
    try:
        for_guests = backends.choose("auto", need_per_page=True, guest=True).cls
    except IdlemapError:
        return cls.open_bitmap
    if not for_guests.caps.sees_guest_accesses:
        return cls.open_bitmap

    def open_bitmap(proc, tlb_flush: str):
        if backends.is_kvm_guest(proc.pid):
            from ..tlb import resolve_for
            return for_guests.open_bitmap(proc, resolve_for(proc, tlb_mode, for_guests).flush)
        return cls.open_bitmap(proc, tlb_flush)
    return open_bitmap


def _daemonize(args, config, serve) -> int:
    """Fork; the child mounts and serves, the parent returns once the mount
    is ready (or reports why it failed), like sshfs and other FUSE tools."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode("utf-8", "replace")
        if msg.startswith("ok"):
            print(_ready_line(args, config, pid))
            return 0
        os.waitpid(pid, 0)
        code, _, text = msg.partition(" ")
        print(f"idlemap: {text.strip() or 'the mount daemon died before mounting'}", file=sys.stderr)
        return int(code) if code.isdigit() else 1
    # child
    os.close(r)
    os.setsid()
    code = 0
    try:
        _logging(args, background=True)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

        def ready() -> None:
            os.write(w, b"ok\n")
            os.close(w)
        serve(config, ready)
    except IdlemapError as e:
        code = e.exit_code
        try:
            os.write(w, f"{code} {e}\n".encode())
        except OSError:
            pass
    except BaseException as e:   # noqa: BLE001 -- the daemon must not leave a traceback-less corpse
        code = 1
        logging.getLogger("idlemap.mount").exception("daemon failed")
        try:
            os.write(w, f"1 {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
    os._exit(code)
