"""A process running a KVM guest is recognised by the KVM VM descriptor it
holds, whatever its name, on the host kernel.

kvmguest (kvm_helpers) is a hand-written VMM, named like no VMM idlemap
knows: auto must still pass over the backends blind to a KVM guest's
accesses for it (the kmod backend walks only host page tables, so a busy
guest would read idle, and reclaim would page its working set out).  What
each backend then reads is measured on the test VM's kernel
(test_kvm_guest_vm.py); here only the recognition, which needs /dev/kvm.
"""
import subprocess
import sys

import pytest

from idlemap.backends import BACKENDS, Choice, is_kvm_guest, kvm_guest_among, refuse_blind_action
from idlemap.errors import BlindToGuest
from idlemap.backends.system import Selection
from idlemap.testing.child import end

from kvm_helpers import KvmGuest, kvm_usable_reason

pytestmark = pytest.mark.skipif(kvm_usable_reason() is not None, reason=kvm_usable_reason() or "")


@pytest.fixture
def guest():
    with KvmGuest(64) as g:
        g.passes(1)
        yield g


@pytest.fixture
def plain():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield p
    end(p)


def test_a_vmm_of_any_name_is_a_kvm_guest(guest, plain):
    assert is_kvm_guest(guest.pid)
    assert not is_kvm_guest(plain.pid)


def test_a_selection_with_it_has_a_kvm_guest(guest, plain):
    assert kvm_guest_among(Selection(pids=frozenset({guest.pid, plain.pid})))
    assert not kvm_guest_among(Selection(pids=frozenset({plain.pid})))


def test_an_exited_vmm_is_not_a_guest_any_more(guest):
    pid = guest.pid
    guest.close()
    assert not is_kvm_guest(pid)


def test_an_action_refuses_readings_blind_to_the_guest(guest, plain):
    """As reclaim and tier meet it on a kernel without page_idle (Debian's):
    auto's only per-page backend is kmod, which reads the guest's working
    set idle (test_kvm_guest_vm.py), so paging out is refused in one
    sentence; the same backend for a process without a guest, and page_idle
    for the guest, are let through."""
    blind = Choice(BACKENDS["kmod"], "kmod, though it cannot see a KVM guest's accesses", auto=True,
                   guest_blind="page_idle: this kernel has no page_idle (CONFIG_IDLE_PAGE_TRACKING is not set)")
    with pytest.raises(BlindToGuest) as e:
        refuse_blind_action(guest.pid, blind)
    msg = str(e.value)
    assert e.value.exit_code == 69 and "\n" not in msg
    assert f"process {guest.pid} runs a KVM guest" in msg and "refusing to page out or move" in msg
    assert "only page_idle sees a guest's accesses, and here page_idle: this kernel has no page_idle" in msg
    refuse_blind_action(plain.pid, blind)
    refuse_blind_action(guest.pid, Choice(BACKENDS["page_idle"], "page_idle"))
