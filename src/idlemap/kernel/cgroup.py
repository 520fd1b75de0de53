"""cgroup v2 memory files: thin and stateless (the reclaim loop is in
cgroup_reclaim.py).

``memory.reclaim`` (Linux 5.19+): writing "NNNK" asks the kernel to reclaim
that much from the cgroup's LRU lists now; it fails with EAGAIN when it
reclaimed less.  ``memory.pressure`` (CONFIG_PSI): PSI stall averages.
``memory.stat``: ``workingset_refault_anon``/``_file`` count pages faulted
back after reclaim (the refault signal).
"""
from __future__ import annotations

import errno
import os

from ..errors import AccessDenied, Unavailable, UsageError

ROOT = "/sys/fs/cgroup"
CGROUP2_MAGIC = 0x63677270


class CgroupUnavailable(Unavailable):
    """The kernel or the mount lacks what the cgroup commands need (69)."""


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    out = []
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    out.append(left.split()[4].replace("\\040", " "))
    except OSError:
        pass
    return out


def resolve(path: str) -> str:
    """An existing cgroup v2 directory for ``path``: a file-system path
    under a cgroup2 mount, or a cgroup path (``/app.slice``) relative to
    the first cgroup2 mount.  One sentence for anything else."""
    if not path:
        raise UsageError("--cgroup needs a path, e.g. /sys/fs/cgroup/app or /app")
    mounts = cgroup2_mounts()
    if not mounts:
        raise CgroupUnavailable("no cgroup v2 file system is mounted (mount -t cgroup2 none /sys/fs/cgroup; "
                                "cgroup v1 has no memory.reclaim)")
    cand = [path]
    if not any(os.path.realpath(path).startswith(m.rstrip("/") + "/") or os.path.realpath(path) == m
               for m in mounts):
        cand.append(os.path.join(mounts[0], path.lstrip("/")))
    for c in cand:
        real = os.path.realpath(c)
        under = any(real == m or real.startswith(m.rstrip("/") + "/") for m in mounts)
        if under and os.path.isdir(real):
            if not os.path.exists(os.path.join(real, "cgroup.procs")):
                raise UsageError(f"{path} is not a cgroup (no cgroup.procs in it)")
            return real
        if under and os.path.exists(real):
            raise UsageError(f"{path} is not a cgroup (not a directory)")
    if os.path.exists(path):
        raise UsageError(f"{path} is not a cgroup: it is not under a cgroup v2 mount ({', '.join(mounts)})")
    raise UsageError(f"no cgroup {path} (looked under {mounts[0]})")


def require_memory_files(cg: str) -> None:
    """memory.current, memory.reclaim and memory.pressure, each missing one
    named with what provides it."""
    if not os.path.exists(os.path.join(cg, "memory.current")):
        if os.path.realpath(cg) in [os.path.realpath(m) for m in cgroup2_mounts()]:
            raise UsageError(f"{cg} is the root cgroup, which has no memory limits or reclaim file: "
                             "give a child cgroup")
        parent = os.path.dirname(cg.rstrip("/"))
        raise CgroupUnavailable(f"the memory controller is not enabled for {cg} "
                                f"(echo +memory > {parent}/cgroup.subtree_control)")
    if not os.path.exists(os.path.join(cg, "memory.reclaim")):
        raise CgroupUnavailable("this kernel has no memory.reclaim (Linux 5.19 or later is needed)")
    try:
        read_pressure(cg)
    except FileNotFoundError:
        raise CgroupUnavailable("this kernel has no memory pressure stall information "
                                "(CONFIG_PSI is not set)") from None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            raise CgroupUnavailable("pressure stall information is disabled (boot with psi=1; "
                                    "CONFIG_PSI_DEFAULT_DISABLED)") from None
        raise


def procs(cg: str) -> list[int]:
    """PIDs (thread-group leaders) in ``cg`` and every cgroup below it."""
    out: list[int] = []
    for d, subdirs, files in os.walk(cg):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                out.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError:
            raise AccessDenied(f"{d}/cgroup.procs") from None
    return sorted(set(out))


def read_pressure(cg: str) -> dict[str, dict[str, float]]:
    """memory.pressure as {"some": {"avg10": %, "avg60": %, "avg300": %, "total": us}, "full": ...}."""
    with open(os.path.join(cg, "memory.pressure")) as f:
        text = f.read()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        out[kind] = {k: float(v) for k, v in (x.split("=", 1) for x in fields)}
    return out


def read_stat(cg: str) -> dict[str, int]:
    with open(os.path.join(cg, "memory.stat")) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def refaults(stat: dict[str, int]) -> int:
    """Pages faulted back after reclaim (anon + file; older kernels: one counter)."""
    if "workingset_refault_anon" in stat:
        return stat["workingset_refault_anon"] + stat.get("workingset_refault_file", 0)
    return stat.get("workingset_refault", 0)


def memory_current(cg: str) -> int:
    with open(os.path.join(cg, "memory.current")) as f:
        return int(f.read())


def reclaim(cg: str, nbytes: int) -> bool:
    """Ask for ``nbytes`` (rounded down to KiB) to be reclaimed from ``cg``.
    True if the kernel reclaimed it all, False if less (EAGAIN)."""
    kib = nbytes // 1024
    if kib <= 0:
        return True
    try:
        fd = os.open(os.path.join(cg, "memory.reclaim"), os.O_WRONLY)
    except PermissionError:
        raise AccessDenied(f"{cg}/memory.reclaim for writing", "run as root or own the cgroup") from None
    try:
        os.write(fd, f"{kib}K".encode())
        return True
    except OSError as e:
        if e.errno == errno.EAGAIN:
            return False
        if e.errno in (errno.EACCES, errno.EPERM):
            raise AccessDenied(f"{cg}/memory.reclaim for writing", "run as root or own the cgroup") from None
        raise
    finally:
        os.close(fd)


KPAGECGROUP = "/proc/kpagecgroup"


def subtree_inodes(cg: str) -> set[int]:
    """Inode numbers of ``cg`` and every cgroup below it: what
    /proc/kpagecgroup reports for a page charged to one of them."""
    out = set()
    for d, _, _ in os.walk(cg):
        try:
            out.add(os.stat(d).st_ino)
        except FileNotFoundError:
            continue
    return out


def page_cgroups(pfns):
    """The memory cgroup inode each frame is charged to (/proc/kpagecgroup,
    CONFIG_MEMCG; 0: not charged), as int64 in the order given."""
    from .frames import read_per_frame
    try:
        return read_per_frame(KPAGECGROUP, pfns)
    except FileNotFoundError:
        raise CgroupUnavailable("this kernel has no /proc/kpagecgroup (CONFIG_MEMCG is not set)") from None
    except PermissionError:
        raise AccessDenied(KPAGECGROUP, "reading which cgroup a page belongs to needs root") from None
