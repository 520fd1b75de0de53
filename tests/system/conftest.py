"""Fixtures shared by the system tests that need swap, a cgroup or NUMA
nodes (the test VM has all three: zram and the memory controller built in,
two nodes from QEMU's -numa), and the kernel-log check around every kmod
test."""
import contextlib
import os

import pytest

from idlemap.kernel import numa
from idlemap.testing import machine

from kernel_log import Kmsg, lockdep_on, splats

IN_A_VM = "1" in (os.environ.get("IDLEMAP_IN_VM"), os.environ.get("IDLEMAP_IN_STOCK_VM"))


@contextlib.contextmanager
def set_up(cm):
    """Enter one of idlemap.testing.machine's set-ups; a kernel that lacks
    it skips the test with the sentence naming the CONFIG_ option."""
    with contextlib.ExitStack() as stack:
        try:
            value = stack.enter_context(cm)
        except machine.MachineLacks as e:
            pytest.skip(str(e))
        yield value


@pytest.fixture(scope="module")
def zram_swap():
    """1 GiB of swap on zram for the module's tests, removed afterwards."""
    with set_up(machine.zram_swap("1G")) as device:
        yield device


@pytest.fixture
def cgroup_dir():
    """A fresh cgroup with the memory controller (cgroup2 mounted first if
    the VM has not), removed after the test."""
    with set_up(machine.cgroup("test")) as path:
        yield path


@pytest.fixture(scope="module")
def two_nodes():
    nodes = numa.online_nodes()
    if len(nodes) < 2:
        pytest.skip("one NUMA node: boot the VM with --numa 2 (CONFIG_NUMA, ACPI_NUMA)")
    return nodes[:2]


@pytest.fixture(autouse=True)
def kmod_kernel_log(request):
    """Around every test of a test_kmod_* file run in a VM: fails it if the
    kernel logged a splat meanwhile (kernel_log.SPLAT: BUG, WARNING, Oops;
    on the debug kernel KASAN, lockdep, DEBUG_VM, DEBUG_ATOMIC_SLEEP and
    DEBUG_LIST reports), or if lockdep stopped validating (it does after its
    first report).  Set up before the module's own fixtures, so a splat
    while the module loads counts against the first test."""
    if not (IN_A_VM and request.module.__name__.startswith("test_kmod_")):
        yield
        return
    log = Kmsg()
    lockdep = lockdep_on()
    yield
    bad = splats(log.read())
    assert not bad, "kernel splat:\n" + "\n".join(bad[:60])
    assert not (lockdep and not lockdep_on()), "lockdep turned itself off during this test"
