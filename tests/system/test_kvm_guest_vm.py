"""A real KVM guest inside the test VM, and the rule that keeps page_idle
for its VMM.

QEMU's TCG offers SVM to the test VM (``-cpu max``) and the test kernel has
CONFIG_KVM_AMD, so kvmguest (kvm_helpers) runs a real KVM guest in it: its
stores go through the nested page tables KVM keeps, as on hardware, never
through the VMM's own page tables.  Measured here, on the same process:

- the kmod backend, which walks the VMM's page tables, reads the guest's
  hot set idle (why the rule exists; docs/kmod.md, "What it cannot see");
- page_idle, whose rmap walk asks KVM through mmu_notifier_clear_young /
  test_young (docs/vms.md), reads it accessed;
- ``--backend auto`` with the module loaded picks page_idle for this VMM,
  and says why; the system pass (top, the exporter) does the same when the
  VMM is among its processes, and keeps kmod when it is not.

Timing-free: every read follows at least two whole passes of the guest over
its hot set since the mark (counted by the guest itself, kvm_helpers).
"""
import os

import numpy as np
import pytest

from idlemap.backends import KmodBackend, PageIdleBackend, choose_for, choose_system
from idlemap.backends.system import Selection
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.process import identify
from idlemap.testing.workload import Workload

from kvm_helpers import KvmGuest, kvm_usable_reason
from wss_helpers import wss_first_line, wss_json

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(os.environ.get("IDLEMAP_IN_VM") != "1",
                                 reason="loads a kernel module and runs a nested KVM guest: only in the test VM"),
              pytest.mark.skipif(not os.path.exists(BITMAP_PATH),
                                 reason="compares with page_idle: CONFIG_IDLE_PAGE_TRACKING is not set"),
              pytest.mark.skipif(kvm_usable_reason() is not None, reason=kvm_usable_reason() or "")]

HOT = 1024                   # pages the guest writes on every pass (4 MiB)


@pytest.fixture(scope="module")
def guest():
    with KvmGuest(HOT) as g:
        g.passes(2)           # every hot page is faulted in and mapped by KVM
        yield g


def window(bitmap_cls, g, **kw):
    """Mark the guest's hot set idle, let the guest pass over it at least
    twice, read: (accessed, present) pages of the hot set."""
    rng = [(g.start, g.end_addr)]
    bm = bitmap_cls.open_bitmap(identify(g.pid), **kw)
    try:
        bm.mark_idle(rng)
        passes = g.more_passes(3)
        m = bm.read(rng)
    finally:
        bm.close()
    present = int(np.count_nonzero(m.present))
    accessed = int(np.count_nonzero(m.present & ~m.idle))
    print(f"\n{bitmap_cls.name}{kw or ''}: {accessed}/{present} hot pages read accessed "
          f"after {passes} guest passes")
    return accessed, present


def test_kmod_cannot_see_a_kvm_guests_accesses(kmod_loaded, guest):
    accessed, present = window(KmodBackend, guest)
    assert present == HOT
    # The VMM itself never touches guest RAM while the guest runs.
    assert accessed == 0


def test_page_idle_sees_a_kvm_guests_accesses(guest):
    # As every command runs it by default (--tlb-flush auto): clear_refs 4
    # after the mark, which also makes KVM drop its nested mappings.
    accessed, present = window(PageIdleBackend, guest, tlb_flush="soft-dirty")
    assert present == HOT
    assert accessed == HOT


def test_wss_auto_keeps_page_idle_for_a_kvm_guest_and_says_so(kmod_loaded, guest, capsys):
    rows = wss_json(capsys, guest.pid, interval="0.5")
    assert [r["backend"] for r in rows] == ["page_idle", "page_idle"]
    # A window always holds whole guest passes: the hot set is in the WSS.
    assert all(r["wss_bytes"] >= HOT * 4096 for r in rows), rows
    first = wss_first_line(capsys, guest.pid)
    assert "kmod cannot see a KVM guest's accesses" in first, first


def test_auto_keeps_kmod_for_a_process_without_a_guest(kmod_loaded, guest):
    with Workload() as w:
        assert choose_for("auto", w.pid, need_per_page=True).cls is KmodBackend
        assert choose_for("auto", guest.pid, need_per_page=True).cls is PageIdleBackend
        others = Selection(pids=frozenset({w.pid}))
        both = Selection(pids=frozenset({w.pid, guest.pid}))
        assert choose_system("auto", selection=others).cls.name == "kmod"
        chosen = choose_system("auto", selection=both)
        assert chosen.cls.name == "page_idle"
        assert "cannot see a KVM guest's accesses" in chosen.reason, chosen.reason


def test_cgroup_scan_keeps_page_idle_with_a_kvm_guest_member(kmod_loaded, cgroup_dir):
    """`reclaim --cgroup` chooses one backend for every member: with a KVM
    guest's VMM among them, the one that sees the guest."""
    from idlemap.cgroup_scan import CgroupScan
    assert CgroupScan(cgroup_dir).choice.cls is KmodBackend          # empty: no guest
    with KvmGuest(64) as g:
        with open(f"{cgroup_dir}/cgroup.procs", "w") as f:
            f.write(str(g.pid))
        chosen = CgroupScan(cgroup_dir).choice
        g.close()                     # before the fixture removes the group
    assert chosen.cls is PageIdleBackend, chosen.reason
    assert "kmod cannot see a KVM guest's accesses" in chosen.reason
