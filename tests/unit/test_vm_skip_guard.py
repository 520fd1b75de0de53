"""tests/conftest.py: in the test VM (IDLEMAP_IN_VM=1) a vm test cannot
vanish silently, whether it skips while running or its whole module skips
while being collected.  Checked by running pytest on small made-up test
files with the real conftest."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

MODULE_SKIP_VM = '''
import pytest
(pytest.importorskip("idlemap_no_such_module_for_the_guard_test"))   # a module-level skip
pytestmark = pytest.mark.vm

def test_a():
    pass
'''
MODULE_SKIP_PLAIN = '''
import pytest
(pytest.importorskip("idlemap_no_such_module_for_the_guard_test"))   # a module-level skip

def test_b():
    pass
'''
TEST_SKIP_VM = '''
import pytest

@pytest.mark.vm
def test_c():
    pytest.skip("feature missing")
'''
PASSING_VM = '''
import pytest

@pytest.mark.vm
def test_d():
    pass
'''


def _run(tmp_path: Path, files: dict[str, str], in_vm: bool) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    vm: needs the test VM\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "IDLEMAP_IN_VM"}
    if in_vm:
        env["IDLEMAP_IN_VM"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("in_vm", [False, True])
def test_module_skipped_at_collection(tmp_path, in_vm):
    p = _run(tmp_path, {"test_x_vm.py": MODULE_SKIP_VM, "test_y.py": MODULE_SKIP_PLAIN, "test_z.py": PASSING_VM},
             in_vm)
    out = p.stdout + p.stderr
    if in_vm:
        assert p.returncode != 0, out
        assert "test_x_vm.py was skipped while being collected in the test VM" in out
        assert "ERROR test_x_vm.py" in out
        assert "SKIPPED [1] test_y.py" in out and "ERROR test_y.py" not in out    # not a vm module: a skip
    else:
        assert p.returncode == 0, out
        assert "2 skipped" in out and "1 passed" in out


def test_skip_while_running_fails_in_the_vm(tmp_path):
    p = _run(tmp_path, {"test_w.py": TEST_SKIP_VM}, in_vm=True)
    assert p.returncode != 0 and "skipped in the test VM" in p.stdout, p.stdout
    p = _run(tmp_path, {"test_w.py": TEST_SKIP_VM}, in_vm=False)
    assert p.returncode == 0 and "1 skipped" in p.stdout, p.stdout
