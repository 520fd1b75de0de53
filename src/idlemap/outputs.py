"""Every file idlemap writes at a path the user gave goes through here.

Why one module: ``-o`` used to rename whatever the path named to
``PATH.old`` and write a regular file in its place -- as root,
``record -o /dev/null`` moved the real /dev/null aside -- and ``--png``
opened devices and FIFOs for writing.  The rules, for every path option
(``-o``/``--output``, ``--png``, ``--log``, bitmap's side files):

* the data goes to a new temporary file in the target's directory, which
  is renamed over the target only when the target is absent or a regular
  file: a reader never sees half a file, and nothing else is ever replaced;
* a device, FIFO, socket, directory or symbolic link at the path is
  refused with one sentence (UsageError, exit 2), before any scanning;
* a record file that exists is kept under the next free number
  (``app.rec.1``, ``app.rec.2``, ...; the highest is the most recent) so
  a repeated command never destroys a recording;
* every OSError becomes one sentence: missing directory (exit 2), no
  permission (77), read-only file system or no space (73).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from .errors import CannotWrite, IdlemapError, UsageError, WriteDenied

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", "a directory")."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check(path: str, what: str = "the output") -> None:
    """Refuse, in one sentence, a path idlemap must not write to.

    Called when options are parsed (so a bad ``-o`` fails before a scan)
    and again right before the rename (the path may have changed since)."""
    if not path:
        raise UsageError(f"the path for {what} is empty")
    d = os.path.dirname(path) or "."
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not os.path.isdir(d):
            raise UsageError(f"cannot write {what} to {path}: its directory does not exist") from None
        st = None
    except NotADirectoryError:
        raise UsageError(f"cannot write {what} to {path}: a part of it is not a directory") from None
    except OSError as e:
        raise _error(e, path, what) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"refusing to write {what} to {path}: it is {file_kind(st.st_mode)}, "
                         "and idlemap only creates or replaces regular files")
    # The new file is made in the directory: say now, not after a scan,
    # if it cannot be (read-only file system, no permission, immutable).
    # access() answers for the effective user, root included (EROFS, EPERM).
    if not os.access(d, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        try:
            ro = bool(os.statvfs(d).f_flag & os.ST_RDONLY)
        except OSError:
            ro = False
        raise _error(OSError(errno.EROFS if ro else errno.EACCES, ""), path, what)


def arg(what: str):
    """An argparse ``type=`` for a path option: checked as :func:`check` does."""
    def parse(text: str) -> str:
        import argparse
        try:
            check(text, what)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        # Other errors (read-only file system 73, permission 77) keep their
        # own exit code: the same as when the write itself fails.
        return text
    parse.__name__ = "path"
    parse.idlemap_path = True           # tests find every path option by this mark
    return parse


def _error(e: OSError, path: str, what: str) -> IdlemapError:
    """One sentence for an OSError met while creating or replacing ``path``."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.isdir(os.path.dirname(path) or "."):
            # /proc, /sys: the directory is there but creates no files
            return CannotWrite(f"cannot write {what} to {path}: its directory does not take new files")
        return UsageError(f"cannot write {what} to {path}: its directory does not exist")
    if e.errno == errno.EISDIR:
        return UsageError(f"refusing to write {what} to {path}: it is a directory")
    if e.errno in (errno.EACCES, errno.EPERM):
        return WriteDenied(f"permission denied writing {what} to {path} "
                           "(a directory you cannot write to, or an immutable file); choose another path")
    if e.errno == errno.EROFS:
        return CannotWrite(f"cannot write {what} to {path}: it is on a read-only file system")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CannotWrite(f"cannot write {what} to {path}: no space left on the device")
    return CannotWrite(f"cannot write {what} to {path}: {why.lower()}")


class Output:
    """A new file next to ``path``, published over it by :meth:`publish`.

    ``fd`` is open for writing.  Until :meth:`publish`, the data lives in a
    hidden temporary file in the same directory (same file system, so the
    rename is atomic); :meth:`discard` removes it."""

    def __init__(self, path: str, what: str = "the output", keep_old: bool = False):
        check(path, what)
        self.path, self.what, self.keep_old = path, what, keep_old
        d, base = os.path.split(path)
        self.published = False
        self.kept: str | None = None
        for n in range(100):
            tmp = os.path.join(d, f".{base}.{os.getpid()}.{n}.tmp")
            try:
                # O_EXCL|O_NOFOLLOW: never open something someone else put there.
                self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o644)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise _error(e, path, what) from None
        else:
            raise CannotWrite(f"cannot write {what} to {path}: could not create a temporary file next to it")
        self.tmp = tmp

    def write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            raise _error(e, self.path, self.what) from None

    def publish(self) -> None:
        """Rename the new file over the target (keeping a record under a number)."""
        try:
            check(self.path, self.what)      # it may have changed since the file was opened
            if self.keep_old and os.path.lexists(self.path):
                self.kept = _keep_numbered(self.path)
            os.rename(self.tmp, self.path)
        except IdlemapError:
            self.discard()
            raise
        except OSError as e:
            self.discard()
            raise _error(e, self.path, self.what) from None
        except BaseException:        # Ctrl-C mid-way: no temporary file left behind
            if not os.path.lexists(self.tmp):
                self.published = True    # the rename happened
            self.discard()
            raise
        self.published = True

    def discard(self) -> None:
        if not self.published:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _keep_numbered(path: str) -> str:
    """Give the existing ``path`` the next free number (``path.N``), and
    return that name.  A hard link claims the number atomically (EEXIST if
    another run took it); where links are not supported, a rename does."""
    d, base = os.path.split(path)
    taken = [0]
    for name in os.listdir(d or "."):
        if name.startswith(base + ".") and name[len(base) + 1:].isdigit():
            taken.append(int(name[len(base) + 1:]))
    n = max(taken) + 1
    while True:
        old = f"{path}.{n}"
        try:
            os.link(path, old, follow_symlinks=False)
            return old
        except FileExistsError:
            n += 1
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if os.path.lexists(old):
                n += 1
                continue
            os.rename(path, old)
            return old


@contextlib.contextmanager
def writing(path: str, what: str = "the output", text: bool = False) -> Iterator:
    """``with writing(path) as f: ...``: a file object on a new file that
    replaces ``path`` only if the block finishes (a failure leaves the
    target as it was)."""
    out = Output(path, what)
    try:
        f = os.fdopen(out.fd, "w" if text else "wb", closefd=False)
        try:
            yield f
            f.flush()
        finally:
            with contextlib.suppress(OSError):
                f.close()
    except OSError as e:
        out.discard()
        raise _error(e, path, what) from None
    except BaseException:
        out.discard()
        raise
    out.close()
    out.publish()


def probe(path: str, what: str = "the output") -> None:
    """Create the new file next to ``path`` and remove it again, so an
    output that cannot be written (/proc, where root passes access() but
    the directory takes no files) fails before a scan, not after it."""
    Output(path, what).discard()


def write_bytes(path: str, data: bytes, what: str = "the output") -> None:
    with writing(path, what) as f:
        f.write(data)
