"""Shared pytest hooks.

Tests marked ``vm`` need the test VM's kernel; ``scripts/test.sh`` runs them
there (IDLEMAP_IN_VM=1) and deselects them on the host with ``-m "not vm"``.
"""
import os

import pytest

IN_VM = os.environ.get("IDLEMAP_IN_VM") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # The VM's kernel has every feature idlemap uses, so a vm test that skips
    # there (feature "missing") points at a bug, not at the kernel.
    if IN_VM and report.skipped and not hasattr(report, "wasxfail") \
            and item.get_closest_marker("vm") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in the test VM, where nothing should be missing: {reason}"
