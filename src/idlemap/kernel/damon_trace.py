"""DAMON's monitoring results through the ``damon:damon_aggregated`` tracepoint.

Why a tracepoint: Linux 6.1's DAMON sysfs offers only per-scheme totals
(stats/sz_tried...); the per-region results (schemes/<S>/tried_regions)
came in 6.2.  The tracepoint has been there since DAMON's first release
(5.15): at the end of every aggregation interval kdamond emits one event per
region -- target index, region count, [start, end), nr_accesses, age
(mm/damon/core.c kdamond_reset_aggregated; include/trace/events/damon.h).
That is the exact region picture DAMON itself works from, the same data
damo records.

We use a private tracefs *instance* (instances/idlemap-PID) so the global
trace buffer, and anyone else's tracing, is left alone; its clock is set to
"mono" so event times compare with time.monotonic().  Writes go through the
caller's :class:`~idlemap.kernel.damon_sysfs.ControlWriter`.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

import numpy as np

from .damon_sysfs import ControlWriter

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENT = "damon/damon_aggregated"
INSTANCE_PREFIX = "idlemap-"

# "<task>-<pid> [cpu] <flags> <secs>.<usecs>: damon_aggregated: target_id=0
#  nr_regions=12 140737000000000-140737000004096: 3 5"
_EVENT_RE = re.compile(
    rb"(\d+\.\d+): damon_aggregated: target_id=(\d+) nr_regions=(\d+) (\d+)-(\d+): (\d+) (\d+)")
_LOST_RE = re.compile(rb"\[LOST (\d+) EVENTS\]")


def find_tracefs() -> str | None:
    """Where tracefs is mounted (None if nowhere)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        mounts = []
    for dev, mnt, fstype, *_ in mounts:
        if fstype == "tracefs":
            return mnt
    for c in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(c, "instances")):
            return c
    return None


def has_event(tracefs: str) -> bool:
    return os.path.isdir(os.path.join(tracefs, "events", EVENT))


def mount_tracefs(where: str = TRACEFS_CANDIDATES[0]) -> None:
    """mount -t tracefs nodev WHERE (the caller unmounts it when done)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", where.encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), where)


def umount(where: str) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(where.encode(), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), where)


def stale_instances(tracefs: str) -> list[str]:
    """Our instances left by idlemap processes that no longer exist
    (killed with SIGKILL before they could clean up)."""
    out = []
    try:
        names = os.listdir(os.path.join(tracefs, "instances"))
    except OSError:
        return out
    for n in names:
        if n.startswith(INSTANCE_PREFIX) and n[len(INSTANCE_PREFIX):].isdigit():
            if not os.path.exists(f"/proc/{n[len(INSTANCE_PREFIX):]}"):
                out.append(os.path.join(tracefs, "instances", n))
    return out


class TraceInstance:
    """A private tracefs instance with damon_aggregated enabled."""

    def __init__(self, tracefs: str, writer: ControlWriter, buffer_kb: int = 2048):
        self.dir = os.path.join(tracefs, "instances", f"{INSTANCE_PREFIX}{os.getpid()}")
        self.w = writer
        self.buffer_kb = buffer_kb
        self.created = False
        self.fd = -1

    def create(self) -> None:
        self.w.mkdir(self.dir)
        self.created = True
        # "mono" = CLOCK_MONOTONIC, the clock of time.monotonic().
        self.w.write(os.path.join(self.dir, "trace_clock"), "mono")
        self.w.write(os.path.join(self.dir, "buffer_size_kb"), self.buffer_kb)
        self.w.write(os.path.join(self.dir, "events", EVENT, "enable"), 1)
        if not self.w.dry_run:
            self.fd = os.open(os.path.join(self.dir, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def read_raw(self, max_bytes: int = 1 << 20) -> bytes:
        """What the pipe holds now (consumed), b"" if nothing."""
        if self.fd < 0:
            return b""
        chunks = []
        got = 0
        while got < max_bytes:
            try:
                b = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def destroy(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.created:
            try:
                self.w.write(os.path.join(self.dir, "events", EVENT, "enable"), 0)
            finally:
                self.w.rmdir(self.dir)
                self.created = False


@dataclass(slots=True)
class Events:
    """Parsed damon_aggregated events, one array entry per region event."""
    time_s: np.ndarray        # float64, CLOCK_MONOTONIC of the aggregation's end
    target: np.ndarray        # int64, index of the target in the context
    nr_regions: np.ndarray    # int64, regions the target had
    start: np.ndarray         # uint64 VA
    end: np.ndarray           # uint64 VA
    nr_accesses: np.ndarray   # int64
    age: np.ndarray           # int64 (aggregation intervals)
    lost: int = 0             # events the kernel dropped (buffer full)

    def __len__(self) -> int:
        return int(self.time_s.size)


class EventParser:
    """Incremental parser of trace_pipe text: feed bytes, get Events."""

    def __init__(self):
        self._rest = b""

    def feed(self, data: bytes) -> Events:
        buf = self._rest + data
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        return parse_events(buf[:cut])


def parse_events(text: bytes) -> Events:
    rows = _EVENT_RE.findall(text)
    lost = sum(int(m) for m in _LOST_RE.findall(text))
    if not rows:
        z = np.empty(0, np.int64)
        return Events(np.empty(0), z, z, np.empty(0, np.uint64), np.empty(0, np.uint64), z, z, lost)
    cols = list(zip(*rows))
    return Events(
        time_s=np.array(cols[0], dtype=np.float64),
        target=np.array(cols[1], dtype=np.int64),
        nr_regions=np.array(cols[2], dtype=np.int64),
        start=np.array([int(x) for x in cols[3]], dtype=np.uint64),
        end=np.array([int(x) for x in cols[4]], dtype=np.uint64),
        nr_accesses=np.array(cols[5], dtype=np.int64),
        age=np.array(cols[6], dtype=np.int64),
        lost=lost)
