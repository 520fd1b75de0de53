"""Fixtures shared by the system tests that need swap, a cgroup or NUMA
nodes (the test VM has all three: zram and the memory controller built in,
two nodes from QEMU's -numa), and the kernel-log check around every kmod
test."""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idlemap import kmodbuild
from idlemap.kernel import kmod, numa
from idlemap.testing import machine

from kernel_log import Kmsg, lockdep_on, splats

IN_STOCK_VM = os.environ.get("IDLEMAP_IN_STOCK_VM") == "1"
IN_A_VM = IN_STOCK_VM or os.environ.get("IDLEMAP_IN_VM") == "1"


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
def kmod_loaded():
    """idlemap's module for the running kernel, loaded for the test file
    with `idlemap kmod load --ko` (the path users take) and unloaded at its
    end (the other files measure page_idle, or load their own); yields the
    .ko.  Which .ko: IDLEMAP_KMOD_KO if set, else the build the host made
    beforehand (kmodbuild.built_path finds it in the cache the VM sees),
    else built here, ~30 s under TCG, against the test kernel's tree or, on
    Debian's stock kernel, its headers package (IDLEMAP_STOCK_DIR)."""
    rel = os.uname().release
    ko = Path(os.environ.get("IDLEMAP_KMOD_KO") or kmodbuild.built_path(rel))
    if not ko.exists():
        if IN_STOCK_VM:
            from idlemap.testvm import stock
            kdir = stock.build_tree(Path(os.environ["IDLEMAP_STOCK_DIR"]))
        else:
            kdir = kmodbuild.vm_kernel_tree()
        ko = kmodbuild.build(kdir)
    assert kmodbuild.vermagic(ko) == rel
    if kmod.loaded():
        kmod.unload()
    r = subprocess.run([sys.executable, "-m", "idlemap", "kmod", "load", "--ko", str(ko)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    print(f"\n{r.stdout.strip()}")
    try:
        yield str(ko)
    finally:
        # A test may have unloaded it (and failed to load it back).
        if kmod.loaded():
            kmod.unload()
        assert not kmod.loaded()


@pytest.fixture(scope="module")
def progs():
    """The mount tests' C callers (mounthelp.CPrograms), built for the test
    file and removed after it."""
    from mounthelp import CPrograms
    p = CPrograms()
    yield p
    p.cleanup()


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
