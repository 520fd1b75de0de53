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


def _is_vm_module(path) -> bool:
    """Whether a test file holds vm tests (read as text: a module skipped
    while being imported leaves no items whose markers could be asked)."""
    try:
        return "mark.vm" in open(path, encoding="utf-8").read()
    except OSError:
        return False


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    # A vm module that skips while it is collected (a module-level skip or
    # importorskip) leaves no items, so the hook above never sees its tests:
    # in the VM that is a failure too, not a silent disappearance.  (A module
    # that fails to import is already an error.)
    if IN_VM and report.skipped and isinstance(collector, pytest.Module) and _is_vm_module(collector.path):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped while being collected in the test VM, "
                           f"where nothing should be missing (its vm tests would vanish): {reason}")
