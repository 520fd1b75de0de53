"""Every process of a cgroup, scanned round by round, with per-page idle
ages: what ``advise --cgroup`` reports and ``reclaim --cgroup`` acts on.

Each member process has its own :class:`~idlemap.scan.Scanner` (per page:
the backend is chosen once for the group by :func:`idlemap.backends.choose`,
like every command's ``--backend``: auto takes idlemap's module when it is
loaded and we are root, else page_idle) and :class:`~idlemap.analysis.advise.VpnAgeTracker`; a round
scans them all, advances every page's age and sums the per-age histograms
into the group's :class:`~idlemap.analysis.advise.Accumulator` (and each
process's own).  Processes that join or leave the cgroup (or any cgroup
below it) are picked up at the end of each round: a newcomer is marked
then and read from the next round, like ``top``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from . import backends
from .analysis import actions as policy
from .analysis import advise as A
from .errors import IdlemapError, NoSuchProcess
from .kernel import cgroup as cg
from .kernel import pagemap as pm
from .kernel import process_madvise as pmad
from .kernel.maps import PAGE_SHIFT
from .kernel.process import check_same, identify
from .scan import Scanner


class Member:
    """One process of the group: its scanner, page ages and advice sums."""

    def __init__(self, scanner: Scanner, kmax: int):
        self.scanner = scanner
        self.pid = scanner.proc.pid
        self.comm = scanner.proc.comm
        self.ages = A.VpnAgeTracker(kmax)
        self.acc = A.Accumulator(kmax)
        self.present = np.zeros(0, bool)
        self.pagemap = pm.Pagemap(scanner.proc.pid)
        self.reclaimed = np.empty(0, np.int64)      # vpns a reclaim loop saw go and not yet come back
        self.pidfd = -1                             # opened at the first pageout
        self.last_t = time.monotonic()

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """Read one round; (resident, promoted) histograms by age."""
        r = self.scanner.round()
        im = r.sample.idle_map
        res, prom = self.ages.step(im.vpns(), im.present & ~im.idle, im.present)
        self.present = np.array(im.present, bool)
        now = time.monotonic()
        self.acc.add(res, prom, now - self.last_t)
        self.last_t = now
        return res, prom

    def present_now(self, v: np.ndarray) -> np.ndarray:
        """Which of the (sorted) page numbers ``v`` are present now (pagemap)."""
        starts, counts = policy.coalesce(v)
        e = self.pagemap.read_ranges(starts, counts, np.empty(v.size, np.uint64))
        return (e & pm.PRESENT) != 0

    def note_reclaimed(self) -> None:
        """After a memory.reclaim write: the pages present at this round's
        reading that are gone now are the writer's doing."""
        v = self.ages.vpns[self.present]
        if v.size:
            self.reclaimed = np.union1d(self.reclaimed, v[~self.present_now(v)])

    def came_back(self) -> int:
        """Pages noted reclaimed that are present again at this round's
        reading (a fault brought them back: each is a promotion); they leave
        the set, as do pages no longer mapped at all."""
        v, vp = self.reclaimed, self.ages.vpns
        if v.size == 0 or vp.size == 0:
            return 0
        at = np.minimum(np.searchsorted(vp, v), vp.size - 1)
        known = vp[at] == v
        back = known & self.present[at]
        self.reclaimed = v[known & ~back]
        return int(back.sum())

    def cold_charged(self, k: int, inodes: set[int]) -> np.ndarray:
        """Page numbers present with age >= k whose frame is charged to the
        cgroup (sorted).

        A process joins a cgroup with its old pages still charged where they
        were (cgroup v2 does not move charges), and memory.reclaim can only
        take the cgroup's own pages: asking for cold pages it does not hold
        makes the kernel reclaim hot ones instead (seen in the test VM: 11
        MiB of refaults and PSI at 2%).  So the request counts frames by
        /proc/kpagecgroup."""
        v = self.ages.cold_vpns(k, self.present)
        if v.size == 0:
            return v
        starts, counts = policy.coalesce(v)
        e = self.pagemap.read_ranges(starts, counts, np.empty(v.size, np.uint64))
        ok = (e & pm.PRESENT) != 0
        if not ok.any():
            return v[:0]
        ino = cg.page_cgroups(e[ok] & pm.PFN_MASK)
        return v[ok][np.isin(ino, np.fromiter(inodes, np.int64))]

    def pageout(self, v: np.ndarray) -> int:
        """process_madvise(MADV_PAGEOUT) of exactly the (sorted) pages ``v``;
        the bytes the kernel accepted.  Unlike memory.reclaim, the kernel
        does not choose: it reclaims these pages whatever their LRU
        position or accessed bits say."""
        if v.size == 0:
            return 0
        if self.pidfd < 0:
            self.pidfd = pmad.pidfd_open(self.pid)
            check_same(self.scanner.proc)           # the pidfd is the process we read, not a PID reuse
        first, npages = policy.coalesce(v)
        res = pmad.process_madvise(self.pidfd, self.pid, first << PAGE_SHIFT, npages << PAGE_SHIFT,
                                   pmad.MADV_PAGEOUT)
        return res.advised_bytes

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.pagemap.close()
        self.scanner.close()


@dataclass
class GroupRound:
    resident: np.ndarray        # pages by age, summed over the members read this round
    promoted: np.ndarray
    window_s: float
    back_pages: int             # noted-reclaimed pages present again
    procs: int


class CgroupScan:
    """The members of cgroup ``path`` (resolved: a cgroup v2 directory)."""

    def __init__(self, path: str, kmax: int = 256, tlb_flush: str = "auto", acting: bool = False,
                 unsafe_no_tlb_flush: bool = False, backend: str = "auto"):
        self.path = path
        # One backend for every member (their ages and sums must mean the
        # same thing); refused here, before any process is touched, with the
        # feature it lacks (a backend without a per-page map is a usage error).
        # A KVM guest's VMM among the members: auto takes a backend that
        # sees the guest's accesses (a member that joins later is checked
        # by its own Scanner when acting).
        members = cg.procs(path)
        guest = backend == "auto" and any(backends.is_kvm_guest(pid) for pid in members)
        self.choice = backends.choose(backend, need_per_page=True, guest=guest)
        if acting:                    # refused here, before the first round's header
            for pid in members:
                backends.refuse_blind_action(pid, self.choice)
        self.kmax = kmax
        self.tlb_flush, self.acting, self.unsafe = tlb_flush, acting, unsafe_no_tlb_flush
        self.members: dict[int, Member] = {}
        self.acc = A.Accumulator(kmax)
        self.tlb: dict = {}
        self.last_t: float | None = None

    def sync(self) -> None:
        pids = set(cg.procs(self.path)) - {os.getpid()}
        for pid in list(self.members):
            if pid not in pids:
                self.members.pop(pid).close()
        for pid in sorted(pids - set(self.members)):
            try:
                proc = identify(pid)
                if proc.is_kernel_thread:
                    continue
                sc = Scanner(proc, backend=self.backend_name, need_per_page=True, tlb_flush=self.tlb_flush,
                             acting=self.acting, unsafe_no_tlb_flush=self.unsafe)
            except NoSuchProcess:
                continue
            try:
                sc.start()
            except NoSuchProcess:
                sc.close()
                continue
            self.tlb = sc.tlb.as_dict()
            try:
                self.members[pid] = Member(sc, self.kmax)
            except NoSuchProcess:
                sc.close()

    @property
    def backend_name(self) -> str:
        return self.choice.cls.name

    def start(self) -> None:
        self.sync()
        self.last_t = time.monotonic()

    def round(self) -> GroupRound:
        """Read every member (dropping the ones gone) and add the sums; the
        membership is not synced here (the caller acts first, then syncs)."""
        k1 = self.kmax + 1
        resident = np.zeros(k1, np.int64)
        promoted = np.zeros(k1, np.int64)
        back = 0
        for pid, m in list(self.members.items()):
            try:
                res, prom = m.step()
            except NoSuchProcess:
                self.members.pop(pid).close()
                continue
            back += m.came_back()
            resident += res
            promoted += prom
        now = time.monotonic()
        window = now - (self.last_t or now)
        self.last_t = now
        self.acc.add(resident, promoted, window)
        return GroupRound(resident, promoted, window, back, len(self.members))

    def each(self, fn) -> None:
        """``fn(member)`` for every member; one that exits meanwhile is dropped."""
        for pid, m in list(self.members.items()):
            try:
                fn(m)
            except NoSuchProcess:
                self.members.pop(pid).close()

    def close(self) -> None:
        for m in self.members.values():
            try:
                m.close()
            except (IdlemapError, OSError):
                pass
        self.members.clear()
