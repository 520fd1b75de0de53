"""Safe by default: a hot set touched continuously at C speed must never read
cold, be paged out or be demoted by a command run with its default options
(docs/tlb.md).

The workload (hotset.c) writes one byte of every hot page in a tight loop
that never sleeps, so its translations stay in the TLB: this is what
page_idle alone gets wrong (it clears accessed bits without a flush).  It
runs pinned to CPU 0 (idlemap on CPU 1: the target never context-switches)
and unpinned.  Placement is checked independently of idlemap's answer:
pagemap swap bits, the kernel's move_pages status and the target's own
major-fault count.
"""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from idlemap.cli import main
from idlemap.kernel import numa
from idlemap.kernel import pagemap as pm
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.process import fault_counts

from fleet_helpers import HotSet
from fleet_helpers import hot_loop as fleet_hot_loop

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB = 1 << 20
HOT_MIB, COLD_MIB = 96, 64       # the sizes the TLB effect was first seen with
HOT, COLD = (HOT_MIB * MiB) >> PAGE_SHIFT, (COLD_MIB * MiB) >> PAGE_SHIFT
PLACEMENTS = ["pinned", "unpinned"]


def report(name, **figures):
    """Figures for the record: pytest -s shows them (one JSON line)."""
    print(json.dumps({"test": name, **figures}), flush=True)


def hot_loop(placement):
    return fleet_hot_loop(HOT_MIB, COLD_MIB, placement)


def run_json(*argv):
    """Run the real CLI, return (exit code, JSON objects it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def entries(w, first, npages):
    with pm.Pagemap(w.pid) as p:
        return p.read((w.addr >> PAGE_SHIFT) + first, npages)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_wss_default_reads_a_hot_loop_exactly(placement):
    with hot_loop(placement) as w:
        rc, rows = run_json("wss", w.pid, 0.5, 6, "--json", "--by-mapping")
        data = [[m for m in r["by_mapping"] if int(m["start"], 16) == w.addr] for r in rows[:-1]]
        rc_none, rows_none = run_json("wss", w.pid, 0.5, 6, "--json", "--by-mapping", "--tlb-flush", "none")
    assert rc == 0 and rc_none == 0
    hot_mib = [d[0]["wss_bytes"] / MiB for d in data]
    unflushed = [[m for m in r["by_mapping"] if int(m["start"], 16) == w.addr][0]["wss_bytes"] / MiB
                 for r in rows_none[:-1]]
    report("wss-tlb", placement=placement, hot_mib=HOT_MIB, flushed_mib=hot_mib, unflushed_mib=unflushed)
    assert all(r["tlb_exact"] and r["tlb_flush"] == "soft-dirty" for r in rows[:-1])
    assert not any(r["tlb_exact"] for r in rows_none[:-1])
    # Within 1% of the truth in every window (the hot set, touched whole
    # many times per window; the cold set never).
    assert all(abs(v - HOT_MIB) <= 0.01 * HOT_MIB for v in hot_mib), hot_mib


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_reclaim_default_never_pages_out_a_hot_loop(placement, zram_swap):
    with hot_loop(placement) as w:
        maj0 = fault_counts(w.pid)[1]
        rc, rows = run_json("reclaim", w.pid, "--cold-for", 3, "--json")
        maj = fault_counts(w.pid)[1] - maj0
        e = entries(w, 0, HOT + COLD)
    summary = rows[-1]
    present, swapped = (e & pm.PRESENT) != 0, (e & pm.SWAPPED) != 0
    hot_out = int(np.count_nonzero(swapped[:HOT]))
    cold_out = int(np.count_nonzero(swapped[HOT:] | ~present[HOT:]))
    report("reclaim-tlb", placement=placement, hot_pages=HOT, hot_swapped=hot_out, major_faults=maj,
           cold_paged_out_pct=100.0 * cold_out / COLD, summary_major_faults=summary["major_faults"],
           stop_reason=summary["stop_reason"])
    assert rc == 0 and summary["tlb_exact"]
    assert hot_out <= 0.01 * HOT                 # hot pages paged out (and still out)
    assert maj <= 0.01 * HOT                     # ... or paged out and faulted back
    assert cold_out >= 0.9 * COLD


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_tier_default_keeps_a_hot_loop_fast(placement, two_nodes):
    fast, slow = two_nodes
    with hot_loop(placement) as w:
        addrs = (w.addr + (np.arange(HOT + COLD, dtype=np.uint64) << PAGE_SHIFT)).astype(np.uint64)
        # The hard start: the hot set on the slow node, the cold on the fast.
        start = np.where(np.arange(HOT + COLD) < HOT, slow, fast).astype(np.int32)
        moved = numa.move_pages(w.pid, addrs, start)
        assert np.count_nonzero(moved == start) >= 0.99 * (HOT + COLD)
        rc, rows = run_json("tier", w.pid, "--fast", fast, "--slow", slow, "--json", "--count", 8)
        node = numa.move_pages(w.pid, addrs)          # the kernel's answer, not ours
    hot_fast = int(np.count_nonzero(node[:HOT] == fast))
    cold_slow = int(np.count_nonzero(node[HOT:] == slow))
    report("tier-tlb", placement=placement, hot_on_fast_pct=100.0 * hot_fast / HOT,
           cold_on_slow_pct=100.0 * cold_slow / COLD, rounds=len(rows) - 1)
    assert rc == 0
    assert hot_fast >= 0.99 * HOT
    assert cold_slow >= 0.9 * COLD


def test_actions_refuse_unflushed_without_the_unsafe_option(capsys):
    with HotSet(4, 4) as w:
        # Actions have no "none": only the option that says it is unsafe.
        assert main(["reclaim", str(w.pid), "--cold-for", "2", "--tlb-flush", "none"]) == 2
        assert "invalid choice: 'none'" in capsys.readouterr().err
        rc = main(["reclaim", str(w.pid), "--cold-for", "1", "--dry-run", "--unsafe-no-tlb-flush"])
        err = capsys.readouterr().err
    assert rc == 0 and "warning: --unsafe-no-tlb-flush" in err


def test_foreign_soft_dirty_user_is_left_alone(capsys):
    """A process whose soft-dirty bits another tool cleared (CRIU does this
    before an incremental dump): measurements go on unflushed and say so,
    actions refuse, and idlemap does not clear the bits again."""
    with HotSet(4, 4) as w:
        with open(f"/proc/{w.pid}/clear_refs", "w") as f:
            f.write("4")                       # the other tool's clear
        rc, rows = run_json("wss", w.pid, 0.2, 1, "--json")
        assert rc == 0 and rows[0]["tlb_flush"] == "none" and not rows[0]["tlb_exact"]
        assert main(["reclaim", str(w.pid), "--cold-for", "1"]) == 75
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "soft-dirty" in err[0]
        # Explicitly asked for, the flush is done.
        rc, rows = run_json("wss", w.pid, 0.2, 1, "--json", "--tlb-flush", "soft-dirty")
        assert rc == 0 and rows[0]["tlb_exact"]
