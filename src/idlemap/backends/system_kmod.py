"""System-wide scanner on idlemap's kernel module: one walk per process.

Where /dev/idlemap exists, a window of ``idlemap top`` or the exporter is
one module walk of each process's page tables: bind the one open device to
the process, walk its trackable mappings with "read and re-mark" (the walk
returns the present and idle page counts, so no bitmap crosses into user
space), next process.  No pagemap, no frames, no global bitmap, and the TLB
is flushed by the module after it clears accessed bits, so the readings are
exact without a soft-dirty flush.

What it gives up against the page_idle pass: a page shared by several
processes counts once per process that maps it (the walk sees page tables,
not frames), so totals and cgroups are sums, as with clear_refs; and a KVM
guest's accesses (EPT) are not seen (``sees_guest_accesses=False``: auto
keeps page_idle when a KVM guest's VMM is among the processes).
"""
from __future__ import annotations

import time

from ..analysis import system as system_analysis
from ..analysis.spans import merge_ranges
from ..errors import AccessDenied, NoSuchProcess, UsageError
from ..kernel import kmod, smaps
from ..kernel.maps import PAGE_SIZE, read_raw, tracked_bounds
from ..kernel.tasks import TaskInfo, read_cgroup, read_task
from .base import Capabilities
from .system import PerProcessScanner, Selection, _Round


class KmodSystemScanner(PerProcessScanner):
    name = "kmod"
    caps = Capabilities(
        granularity="page", per_page=True, needs_root=True, sees_guest_accesses=False,
        summary="one walk of each process's page tables per window by idlemap's module (read and "
                "re-mark in one walk, TLB flushed); shared pages count once per process",
        flushes_tlb=True)

    def __init__(self, selection: Selection | None = None, pss: bool = False, cgroups: bool = False):
        super().__init__(selection, pss, cgroups)
        self.dev = kmod.Device()

    def close(self) -> None:
        self.dev.close()

    def _walk(self, t: TaskInfo, clear: bool, r: _Round) -> tuple[int, int] | None:
        """(present, idle) pages of ``t``; with ``clear`` its accessed bits
        are cleared in the same walk.  None if it vanished or is not ours."""
        try:
            self.dev.bind(t.pid)
            # The module holds the process bound from here on; the PID is
            # the one listed only if its start time still matches.
            now = read_task(t.pid)
            if now is None or now.start_ticks != t.start_ticks:
                raise NoSuchProcess(t.pid)
            # adjacent mappings in one walk (nothing lies between them);
            # marking: one TLB flush per process, at its last walk
            bounds = merge_ranges(tracked_bounds(read_raw(t.pid), accessible_only=True)) or []
            present, idle = self.dev.walk_many([(lo, hi, kmod.NO_BITMAPS) for lo, hi in bounds], clear)
            return present, idle
        except UsageError:          # became a kernel thread's PID meanwhile: no user memory
            r.vanished += 1
        except (NoSuchProcess, AccessDenied, OSError) as e:
            r.lost(e, f"walking PID {t.pid}'s page tables")
        return None

    def _mark_one(self, t: TaskInfo, r: _Round) -> bool:
        return self._walk(t, True, r) is not None

    def sample(self, remark: bool = True) -> system_analysis.SystemSample:
        if self.marked_at is None:
            self.mark()
        t0 = time.monotonic()
        r = _Round()
        rows, windows = [], []
        marked: dict = {}
        new = 0
        for t in self.tasks():
            since = self._marked.get(t.key)
            got = self._walk(t, remark or since is None, r)
            if got is None:
                continue
            end = time.monotonic()
            if since is None:
                new += 1            # marked just now: reported from the next window
                marked[t.key] = end
                continue
            marked[t.key] = end if remark else since
            present, idle = got
            pss = -1
            if self.pss:
                try:
                    pss = smaps.read_rollup(t.pid).get("Pss", -1)
                except (NoSuchProcess, AccessDenied, OSError):
                    pss = -1
            windows.append(end - since)
            rows.append(system_analysis.ProcessUsage(t.pid, t.comm, read_cgroup(t.pid), present * PAGE_SIZE,
                                        (present - idle) * PAGE_SIZE, end - since, pss, -1))
        window = sorted(windows)[len(windows) // 2] if windows else 0.0
        return self._finish(rows, window, marked, new, r, t0, remark)
