"""The FUSE operations of ``idlemap mount`` (services/fuse.py has the layout,
the inode scheme and who may read what).  pyfuse3 and trio are imported at
the top: this module is loaded only once a mount is being served."""
from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

import pyfuse3
import trio

from ..errors import FeatureMissing, IdlemapError, NoSuchProcess
from ..kernel import creds as kcreds
from ..kernel.process import ProcessId, identify, list_pids
from ..tlb import resolve as resolve_tlb
from . import access
from .fuse import (FILES, IDLE_BITMAP, IDLE_PAGES, MODES, NAMES, NEEDS_PER_PAGE, PRESENT_BITMAP, ROOT_INODE, WSS,
                   MountConfig, is_user_process, log, per_page_missing, split_inode)
from .procfiles import (BITMAP_FILE_BYTES, BitmapFile, FileOpError, IdlePagesFile, ImageBinding, MarkLog, WssFile,
                        errno_of)

class _Handle:
    def __init__(self, kind: int, proc: ProcessId, file, binding: ImageBinding):
        self.kind = kind
        self.proc = proc
        self.file = file
        self.binding = binding
        self.lock = trio.Lock()



class IdlemapFS(pyfuse3.Operations):
    def __init__(self, config: MountConfig):
        super().__init__()
        self.config = config
        self.handles: dict[int, _Handle] = {}
        self.next_fh = 1
        self.marks = MarkLog({})
        self.yama = kcreds.yama_ptrace_scope()
        try:
            self.user_ns = kcreds.user_ns("self")
        except OSError:
            self.user_ns = ("unknown",)      # matches no caller: nobody's capabilities count
        self._warned_per_page = False
        self._t0 = time.time_ns()

    # -- attributes ----------------------------------------------------
    def _attr(self, inode: int, mode: int, uid: int = 0, gid: int = 0, size: int = 0,
              mtime_ns: int | None = None):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_mode = mode
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_uid, a.st_gid = uid, gid
        a.st_size = size
        a.st_blksize = 4096
        a.st_blocks = 0
        t = self._t0 if mtime_ns is None else mtime_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        return a

    def _proc(self, pid: int) -> ProcessId:
        try:
            proc = identify(pid)
        except NoSuchProcess:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except IdlemapError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if not is_user_process(proc):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return proc

    def _proc_attr(self, pid: int, kind: int):
        self._proc(pid)
        try:
            st = os.stat(f"/proc/{pid}")
        except OSError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        inode = pid << 3 | kind
        if kind == 0:
            return self._attr(inode, stat.S_IFDIR | 0o555, st.st_uid, st.st_gid, 0, st.st_mtime_ns)
        size = BITMAP_FILE_BYTES if kind in (IDLE_BITMAP, PRESENT_BITMAP) else 0
        return self._attr(inode, stat.S_IFREG | MODES[kind], st.st_uid, st.st_gid, size, st.st_mtime_ns)

    async def getattr(self, inode, ctx=None):
        if inode == ROOT_INODE:
            return self._attr(ROOT_INODE, stat.S_IFDIR | 0o555)
        pid, kind = split_inode(inode)
        if pid <= 0 or (kind and kind not in NAMES):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._proc_attr(pid, kind)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == ROOT_INODE:
            if name in (b".", b".."):
                return await self.getattr(ROOT_INODE)
            if not name.isdigit() or name.startswith(b"0"):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._proc_attr(int(name), 0)
        pid, kind = split_inode(parent_inode)
        if kind != 0:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b"..":
            return await self.getattr(ROOT_INODE)
        if name == b".":
            return self._proc_attr(pid, 0)
        if name not in FILES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._proc_attr(pid, FILES[name][0])

    async def setattr(self, inode, attr, fields, fh, ctx):
        # O_TRUNC from `echo ... > idle_bitmap` arrives as a size change:
        # ignore it, as procfs does for its writable files.
        return await self.getattr(inode)

    async def opendir(self, inode, ctx):
        if inode != ROOT_INODE:
            pid, kind = split_inode(inode)
            if kind != 0:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            self._proc(pid)
        return inode

    async def readdir(self, fh, start_id, token):
        if fh == ROOT_INODE:
            # Listed in PID order; an entry's id is its PID, so a listing
            # resumed after a process exited does not skip or repeat one.
            for pid in list_pids():
                if pid <= start_id:
                    continue
                try:
                    attr = self._proc_attr(pid, 0)
                except pyfuse3.FUSEError:
                    continue
                if not pyfuse3.readdir_reply(token, str(pid).encode(), attr, pid):
                    return
            return
        pid, _ = split_inode(fh)
        for i, (name, (kind, _)) in enumerate(FILES.items(), start=1):
            if i <= start_id:
                continue
            try:
                attr = self._proc_attr(pid, kind)
            except pyfuse3.FUSEError:
                return
            if not pyfuse3.readdir_reply(token, name, attr, i):
                return

    async def releasedir(self, fh):
        return None

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    # -- access ------------------------------------------------------------
    def _caller(self, ctx) -> access.Caller:
        """The requester, with its capabilities only when verified (fail
        closed): FUSE gives the caller's fsuid/fsgid and its thread ID in
        the daemon's PID namespace (0 if it is not visible there)."""
        unknown = access.Caller(uid=ctx.uid, gid=ctx.gid)
        if ctx.pid <= 0:
            return unknown
        try:
            cc = kcreds.read_creds(ctx.pid)
            ns = kcreds.user_ns(ctx.pid)
        except (OSError, KeyError, ValueError, IndexError):
            return unknown
        # The same process as the request's (not a PID reused since):
        # its fsuid/fsgid are the ones the kernel put in the request.
        if (cc.uids[3], cc.gids[3]) != (ctx.uid, ctx.gid):
            return unknown
        if ns != self.user_ns:
            # Capabilities held in a child user namespace (unshare -U)
            # give nothing over processes or page_idle outside it.
            return access.Caller(ctx.uid, ctx.gid, cc.tgid, cap_sys_ptrace=False)
        return access.Caller(ctx.uid, ctx.gid, cc.tgid, cc.has_cap_sys_ptrace, cc.cap_eff)

    def _needs_frames(self, kind: int) -> bool:
        """Does this file hand out per-page idle data?"""
        return kind in NEEDS_PER_PAGE or (kind == WSS and self.config.per_page)

    def _decide(self, pid: int, ctx, kind: int) -> access.Decision:
        try:
            tc = kcreds.read_creds(pid)
            owner = kcreds.proc_owner(pid)
        except (OSError, KeyError, ValueError, IndexError):
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        dumpable = owner == (tc.uids[1], tc.gids[1])
        anc = kcreds.ancestors(pid) if self.yama == 1 else ()
        rule = access.may_read_frames if self._needs_frames(kind) else access.may_read
        return rule(self._caller(ctx), access.Target(tc, dumpable, anc), self.yama)

    async def access(self, inode, mode, ctx):
        if inode == ROOT_INODE:
            return not (mode & os.W_OK)
        pid, kind = split_inode(inode)
        if kind == 0:
            return not (mode & os.W_OK)
        if mode & os.W_OK and kind != IDLE_BITMAP:
            return False
        return self._decide(pid, ctx, kind).allowed

    async def open(self, inode, flags, ctx):
        pid, kind = split_inode(inode)
        if kind not in NAMES:
            raise pyfuse3.FUSEError(errno.EISDIR if kind == 0 else errno.ENOENT)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writing and kind != IDLE_BITMAP:
            raise pyfuse3.FUSEError(errno.EACCES)
        proc = self._proc(pid)
        # Bind first, decide second, verify the binding last: whatever
        # the target executes meanwhile, the descriptor answers only for
        # the image whose credentials were checked (ImageBinding).
        try:
            binding = ImageBinding(proc)
        except (IdlemapError, OSError) as e:
            raise pyfuse3.FUSEError(errno_of(e)) from None
        try:
            d = self._decide(pid, ctx, kind)
            if not d.allowed:
                log.info("denied %s of PID %d to uid %d (pid %d): %s",
                         NAMES[kind].decode(), pid, ctx.uid, ctx.pid, d.reason)
                raise pyfuse3.FUSEError(errno.EACCES)
        except BaseException:
            binding.close()
            raise
        if kind in NEEDS_PER_PAGE and not self.config.per_page:
            binding.close()
            if not self._warned_per_page:
                log.warning("%s", per_page_missing(self.config))
                self._warned_per_page = True
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        try:
            f = await trio.to_thread.run_sync(self._make_file, kind, proc)
        except (IdlemapError, OSError) as e:
            binding.close()
            if isinstance(e, FeatureMissing) and not self._warned_per_page:
                log.warning("%s", e)
                self._warned_per_page = True
            raise pyfuse3.FUSEError(errno_of(e)) from None
        except BaseException:
            binding.close()
            raise
        try:
            binding.check()
        except (IdlemapError, FileOpError, OSError) as e:
            log.info("denied %s of PID %d to uid %d (pid %d): %s",
                     NAMES[kind].decode(), pid, ctx.uid, ctx.pid, e)
            f.close()
            binding.close()
            raise pyfuse3.FUSEError(errno_of(e)) from None
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = _Handle(kind, proc, f, binding)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _make_file(self, kind: int, proc: ProcessId):
        if kind == PRESENT_BITMAP:
            return BitmapFile(proc, "present")
        bm = None
        if self.config.per_page:
            # auto: flushed unless this target's soft-dirty bits belong to
            # another tool (tlb.py); decided per open file, per target.  A
            # backend that flushes in its own walk (kmod) needs none.
            tlb = resolve_tlb(proc, self.config.tlb_flush, can_flush=True,
                              flushes_itself=self.config.flushes_tlb).flush
            bm = self.config.open_bitmap(proc, tlb)
        if kind == IDLE_BITMAP:
            return BitmapFile(proc, "idle", bm, self.marks)
        if kind == IDLE_PAGES:
            return IdlePagesFile(proc, bm)
        return WssFile(proc, bm, self.marks, self.config.backend)

    async def _run(self, fh: int, what: str, fn: Callable, *args):
        h = self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        def bound():
            # Before: nothing is read or marked for a new image.  After:
            # nothing read across an exec is handed out.
            h.binding.check()
            out = fn(*args)
            h.binding.check()
            return out

        async with h.lock:
            try:
                return await trio.to_thread.run_sync(bound)
            except (IdlemapError, FileOpError, OSError) as e:
                log.debug("%s of %s for PID %d: %s", what, NAMES[h.kind].decode(), h.proc.pid, e)
                raise pyfuse3.FUSEError(errno_of(e)) from None
            except Exception:
                log.exception("%s of %s for PID %d failed", what, NAMES[h.kind].decode(), h.proc.pid)
                raise pyfuse3.FUSEError(errno.EIO) from None

    async def read(self, fh, off, size):
        h = self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self._run(fh, "read", h.file.read, off, size)

    async def write(self, fh, off, buf):
        h = self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if h.kind != IDLE_BITMAP:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self._run(fh, "write", h.file.write, off, buf)

    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if h is not None:
            async with h.lock:
                await trio.to_thread.run_sync(h.file.close)
                h.binding.close()
