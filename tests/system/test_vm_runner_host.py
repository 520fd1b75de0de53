"""idlemap.testvm.run boots the test VM, streams the output, returns the exit status."""
import shutil

import pytest

from idlemap import testvm
from idlemap.errors import IdlemapError


@pytest.fixture(scope="module")
def kernel():
    if shutil.which(testvm.QEMU) is None:
        pytest.skip(f"{testvm.QEMU} is not installed (scripts/setup.sh installs it)")
    try:
        return testvm.kernel_image(build=False)
    except IdlemapError as e:
        pytest.skip(str(e))


def test_run_returns_exit_status_and_streams_output(kernel, capfd):
    code = 'import sys; print(open("/proc/version").read()); sys.exit(3)'
    assert testvm.run([testvm.real_python(), "-c", code], timeout_s=300) == 3
    out = capfd.readouterr().out
    assert "Linux version 6.1." in out
