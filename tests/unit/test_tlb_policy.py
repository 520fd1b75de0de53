"""tlb.resolve: which flush a command uses (the decisions that need no
target; the soft-dirty check runs against real processes in
tests/system/test_tlb_safety_vm.py and tests/cli/test_tlb_cli.py)."""
import pytest

from idlemap.errors import UsageError
from idlemap.tlb import MODES, TlbPolicy, resolve


def test_auto_without_a_target_flushes():
    p = resolve(None, "auto", can_flush=True)
    assert p == TlbPolicy("auto", "soft-dirty", True, "")
    assert p.as_dict() == {"tlb_flush": "soft-dirty", "tlb_exact": True}


def test_none_measures_but_says_so():
    p = resolve(None, "none", can_flush=True)
    assert (p.flush, p.exact) == ("none", False)
    assert "may read idle" in p.note and "--tlb-flush none" in p.note


def test_actions_never_run_unflushed_by_request():
    with pytest.raises(UsageError, match="--unsafe-no-tlb-flush"):
        resolve(None, "none", can_flush=True, acting=True)


def test_unsafe_option_is_the_only_way_and_warns():
    p = resolve(None, "auto", can_flush=True, acting=True, unsafe=True)
    assert (p.flush, p.exact) == ("none", False)
    assert p.note.startswith("warning: --unsafe-no-tlb-flush")


def test_a_backend_that_cannot_flush():
    p = resolve(None, "auto", can_flush=False, what="damon backend")
    assert (p.flush, p.exact) == ("none", False) and "damon backend cannot flush" in p.note
    with pytest.raises(UsageError, match="cannot decide an action"):
        resolve(None, "auto", can_flush=False, acting=True, what="damon backend")


def test_unknown_mode():
    assert MODES == ("auto", "soft-dirty", "none")
    with pytest.raises(UsageError):
        resolve(None, "sometimes", can_flush=True)


def test_a_backend_that_flushes_in_its_own_walk():
    """The kernel module clears and flushes in one walk: exact whatever was
    asked, and no soft-dirty check or cost."""
    for asked in MODES:
        assert resolve(None, asked, can_flush=False, flushes_itself=True, acting=True) == \
            TlbPolicy(asked, "kmod", True, "")
