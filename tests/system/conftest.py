"""Fixtures shared by the system tests that need swap or NUMA nodes (the
test VM has both: zram built in, two nodes from QEMU's -numa)."""
import os
import subprocess

import pytest

from idlemap.kernel import numa

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
