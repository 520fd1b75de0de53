"""tier --fast-capacity / --fast-ratio (the capacity policy) on a real
kernel: the test VM's 2 NUMA nodes and real move_pages.

Where every page is comes from the kernel (a move_pages status query of
each page of the mapping), never from idlemap's own figures.  The engine
test is timing-free: the workload touches exactly its hot set (every
round) and its warm set (every 2nd round) between rounds.
"""
import json
import os

import numpy as np
import pytest

from idlemap.actions import TierConfig, Tierer
from idlemap.cli import main
from idlemap.kernel import numa
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.process import identify
from idlemap.testing.workload import Workload

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB = 1 << 20
TOTAL_MIB, HOT_MIB, WARM_MIB, COLD_ON_FAST_MIB = 256, 48, 32, 64


def pages(mib):
    return (mib * MiB) >> PAGE_SHIFT


def report(name, **figures):
    print(json.dumps({"test": name, **figures}), flush=True)


def nodes_of(pid, addr, npages):
    """The kernel's answer for where each page is (move_pages status query)."""
    return numa.move_pages(pid, addr + (np.arange(npages, dtype=np.uint64) << PAGE_SHIFT))


def test_capacity_keeps_the_hottest_that_fit_on_fast(two_nodes):
    fast, slow = two_nodes
    total, hot, warm = pages(TOTAL_MIB), pages(HOT_MIB), pages(WARM_MIB)
    cap_mib = HOT_MIB + WARM_MIB                 # exactly the hot and the warm set
    cap = pages(cap_mib)
    with Workload() as w:
        a = w.map("data", TOTAL_MIB)
        # [hot | warm | cold]: hot and warm start on the slow node, 64 MiB of
        # the cold set on the fast one (below the capacity), the rest slow.
        w.bind("data", slow, 0, hot + warm)
        w.bind("data", fast, hot + warm, pages(COLD_ON_FAST_MIB))
        w.bind("data", slow, hot + warm + pages(COLD_ON_FAST_MIB), total - hot - warm - pages(COLD_ON_FAST_MIB))
        w.touch("data")
        start = nodes_of(w.pid, a, total)
        assert np.count_nonzero(start == fast) == pages(COLD_ON_FAST_MIB)
        cfg = TierConfig(fast=fast, slow=slow, fast_capacity_bytes=cap_mib * MiB, cap_bytes=64 * MiB,
                         ranges=[(a, a + TOTAL_MIB * MiB)])
        on_fast, rounds = [], []
        with Tierer(identify(w.pid), cfg) as eng:
            assert eng.rounds.tlb.exact            # readings that decide moves are flushed
            eng.start()
            quiet = 0
            for r in range(30):
                w.touch("data", 1, 0, hot)
                if r % 2 == 0:
                    w.touch("data", 1, hot, warm)
                res = eng.round()
                rounds.append(res)
                on_fast.append(int(np.count_nonzero(nodes_of(w.pid, a, total) == fast)))
                quiet = quiet + 1 if res.round >= 2 and res.promote_pages + res.demote_pages == 0 else 0
                if quiet >= 3:
                    break
            s = eng.summary("done")
        end = nodes_of(w.pid, a, total)
    hot_fast = np.count_nonzero(end[:hot] == fast) / hot
    warm_fast = np.count_nonzero(end[hot:hot + warm] == fast) / warm
    cold_slow = np.count_nonzero(end[hot + warm:] == slow) / (total - hot - warm)
    report("tier_capacity", cap_mib=cap_mib, rounds=len(rounds), hot_on_fast_pct=100 * hot_fast,
           warm_on_fast_pct=100 * warm_fast, cold_on_slow_pct=100 * cold_slow,
           fast_mib_per_round=[n / 256 for n in on_fast],
           moved_mib_per_round=[(x.promoted_pages + x.demoted_pages) / 256 for x in rounds], failed=s.failed)
    assert hot_fast == 1.0 and warm_fast == 1.0 and cold_slow == 1.0
    # The kernel never held more of the target on the fast node than the
    # capacity after a round, and never more than the move cap moved.
    assert max(on_fast) <= cap
    assert all(x.promoted_pages + x.demoted_pages <= pages(64) for x in rounds)
    assert s.capacity_pages == cap and not s.failed


def test_ratio_command_and_dry_run(two_nodes, capsys):
    fast, slow = two_nodes
    total, hot = pages(128), pages(32)
    with Workload() as w:
        a = w.map("data", 128)
        w.bind("data", slow)
        w.touch("data")
        w.hot("data", 0, hot)                  # at C speed, never pausing, until stop
        rng = ["--range", f"{a:#x}-{a + 128 * MiB:#x}"]
        base = ["tier", str(w.pid), "--fast", str(fast), "--slow", str(slow), "--fast-ratio", "0.25", *rng]
        before = nodes_of(w.pid, a, total)
        rc_dry = main([*base, "--dry-run", "--period", "0.3", "--count", "3", "--json"])
        dry = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        after_dry = nodes_of(w.pid, a, total)
        rc = main([*base, "--period", "0.3", "--count", "12", "--json"])
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        w.stop()
        end = nodes_of(w.pid, a, total)
    report("tier_ratio", hot_on_fast_pct=100 * np.count_nonzero(end[:hot] == fast) / hot,
           cold_on_slow_pct=100 * np.count_nonzero(end[hot:] == slow) / (total - hot),
           summary=lines[-1])
    assert rc_dry == 0 and rc == 0
    assert np.array_equal(before, after_dry) and (before == slow).all()
    assert dry[-1]["dry_run"] and dry[-1]["promoted_bytes"] == 0
    assert dry[-2]["promote_bytes"] == 32 * MiB             # planned: the hot quarter
    s = lines[-1]
    assert s["schema"] == "idlemap.tier.summary/1" and s["fast_capacity_bytes"] == 32 * MiB
    assert (end[:hot] == fast).all() and (end[hot:] == slow).all()
