"""The debug test kernel is what scripts/test.sh kmod-debug relies on: its
checkers are built in and still armed when the kmod tests start.

Run first in that phase (``python -m idlemap.testvm --kernel debug``, with
IDLEMAP_DEBUG_KERNEL=1), before test_kmod_vm.py and test_kmod_fuzz.py, whose
every test fails on a splat in the kernel log or on lockdep turning itself
off.  Lockdep reports only its first problem and then stops validating, so a
splat during boot would blind every test after it: that is checked here.
"""
import gzip
import os

import pytest

from kernel_log import lockdep_on, since_boot, splats

pytestmark = [pytest.mark.kmod_debug, pytest.mark.skipif(
    os.environ.get("IDLEMAP_DEBUG_KERNEL") != "1",
    reason="needs the debug test kernel: scripts/test.sh kmod-debug")]

CHECKERS = ("CONFIG_KASAN=y", "CONFIG_KASAN_GENERIC=y", "CONFIG_PROVE_LOCKING=y", "CONFIG_LOCKDEP=y",
            "CONFIG_DEBUG_VM=y", "CONFIG_DEBUG_ATOMIC_SLEEP=y", "CONFIG_DEBUG_LIST=y",
            "CONFIG_MODULES=y", "CONFIG_IDLE_PAGE_TRACKING=y")


def test_debug_kernel_has_its_checkers():
    assert os.uname().release.endswith("-debug")
    with gzip.open("/proc/config.gz", "rt") as f:
        config = set(f.read().splitlines())
    missing = [c for c in CHECKERS if c not in config]
    assert not missing, f"not in the running kernel's config: {missing}"


def test_boot_log_is_clean_and_lockdep_armed():
    bad = splats(since_boot())
    assert not bad, "the debug kernel logged a splat before any test:\n" + "\n".join(bad[:40])
    assert lockdep_on() is True, "lockdep is off (debug_locks 0 in /proc/lockdep_stats)"
