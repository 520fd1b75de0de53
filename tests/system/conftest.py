"""Fixtures shared by the system tests that need swap or NUMA nodes (the
test VM has both: zram built in, two nodes from QEMU's -numa), and the
kernel-log check around every kmod test."""
import os
import subprocess

import pytest

from idlemap.kernel import numa

from kernel_log import Kmsg, lockdep_on, splats

IN_A_VM = "1" in (os.environ.get("IDLEMAP_IN_VM"), os.environ.get("IDLEMAP_IN_STOCK_VM"))

ZRAM = "/sys/block/zram0"


@pytest.fixture(scope="module")
def zram_swap():
    """1 GiB of swap on zram (CONFIG_ZRAM, CRYPTO_LZO), removed afterwards."""
    if not os.path.exists(ZRAM):
        if not os.path.exists("/sys/class/zram-control/hot_add"):
            pytest.skip("no zram: CONFIG_ZRAM is not set")
        with open("/sys/class/zram-control/hot_add") as f:
            f.read()
    with open(f"{ZRAM}/disksize", "w") as f:
        f.write("1G")
    subprocess.run(["mkswap", "/dev/zram0"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["swapon", "/dev/zram0"], check=True)
    try:
        yield "/dev/zram0"
    finally:
        subprocess.run(["swapoff", "/dev/zram0"], check=False)
        with open(f"{ZRAM}/reset", "w") as f:
            f.write("1")


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
