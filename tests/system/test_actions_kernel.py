"""The action syscalls on whatever kernel runs the tests (host or VM):
pidfd_open + process_madvise, move_pages status queries, node meminfo."""
import os

import numpy as np
import pytest

from idlemap.errors import NoSuchProcess, TargetExited
from idlemap.kernel import numa
from idlemap.kernel import pagemap as pm
from idlemap.kernel import process_madvise as pmad
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.testing.workload import Workload

MiB = 1 << 20


def present(pid, addr, npages):
    with pm.Pagemap(pid) as p:
        return (p.read(addr >> PAGE_SHIFT, npages) & pm.PRESENT) != 0


def test_process_madvise_cold_keeps_pages_and_reports_refused_ranges():
    with Workload() as w:
        a = w.map("d", 8)
        w.touch("d")
        fd = pmad.pidfd_open(w.pid)
        try:
            # A range in the middle that is not mapped (page 0): the kernel
            # stops there; the pass goes on after it.
            r = pmad.process_madvise(fd, w.pid, np.array([a, 4096, a + 4 * MiB]),
                                     np.array([4 * MiB, 4096, 4 * MiB]), pmad.MADV_COLD)
        finally:
            os.close(fd)
        assert present(w.pid, a, 2048).all()
    assert r.advised_bytes == 8 * MiB
    assert r.failed == [(4096, 4096, "-ENOMEM")]
    assert r.calls == 3


def test_process_madvise_many_ranges_go_in_iov_max_batches():
    with Workload() as w:
        a = w.map("d", 16)
        w.touch("d")
        starts = a + (np.arange(0, 4096, 2, dtype=np.uint64) << PAGE_SHIFT)    # 2048 ranges
        fd = pmad.pidfd_open(w.pid)
        r = pmad.process_madvise(fd, w.pid, starts, np.full(starts.size, 4096), pmad.MADV_COLD)
        os.close(fd)
    assert r.advised_bytes == 2048 * 4096 and r.calls == 2 and not r.failed


def test_exited_target_raises_target_exited():
    w = Workload()
    a = w.map("d", 1)
    fd = pmad.pidfd_open(w.pid)
    w.kill()
    with pytest.raises(TargetExited):
        pmad.process_madvise(fd, w.pid, np.array([a]), np.array([4096]), pmad.MADV_COLD)
    with pytest.raises(TargetExited):
        numa.move_pages(w.pid, np.array([a], np.uint64))
    os.close(fd)
    with pytest.raises(NoSuchProcess):
        pmad.pidfd_open(w.pid)


def test_move_pages_status_query_is_real_placement():
    with Workload() as w:
        a = w.map("d", 4)
        w.touch("d", 2)                           # even pages only
        st = numa.move_pages(w.pid, a + (np.arange(1024, dtype=np.uint64) << PAGE_SHIFT))
        on = numa.pages_by_node(st)
        # All on one node (first touch by one thread); "moving" them to
        # the node they are on changes nothing and succeeds.
        assert list(on.values()) == [512] and list(on)[0] in numa.online_nodes()
        node = list(on)[0]
        st2 = numa.move_pages(w.pid, a + (np.arange(0, 1024, 2, dtype=np.uint64) << PAGE_SHIFT),
                              np.full(512, node, np.int32))
    assert (st[::2] == node).all()
    # Never touched: -ENOENT since Linux 6.5, -EFAULT before (FOLL_DUMP).
    assert numa.failures_by_name(st) in ({"-ENOENT": 512}, {"-EFAULT": 512})
    assert (st2 == node).all()


def test_node_meminfo():
    m = numa.node_memory(numa.online_nodes()[0])
    assert m.total_bytes > 0 and m.used_bytes + m.free_bytes == m.total_bytes
