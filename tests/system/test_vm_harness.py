"""The test VM gives what the vm tests rely on (runs inside it: scripts/test.sh vm)."""
import os
import platform

import pytest

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.environ.get("IDLEMAP_IN_VM") != "1",
                       reason="checks the test VM itself; run with scripts/test.sh vm"),
]


def test_page_idle_bitmap_is_writable():
    fd = os.open("/sys/kernel/mm/page_idle/bitmap", os.O_RDWR)
    try:
        # Writing zero words is harmless: only set bits mark frames idle.
        assert os.pwrite(fd, bytes(8), 0) == 8
    finally:
        os.close(fd)


def test_damon_sysfs_exists():
    assert os.path.isfile("/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds")


def test_two_numa_nodes():
    with open("/sys/devices/system/node/online") as f:
        assert f.read().strip() == "0-1"


def test_kernel_is_6_1():
    assert platform.release().startswith("6.1.")
