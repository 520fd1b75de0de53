"""Rendering of reclaim/tier rounds and summaries, from plain records."""
import io

import numpy as np

from idlemap.actions import ReclaimRound, ReclaimSummary, TierRound, TierSummary
from idlemap.render import actions as ra

MB = 1 << 20


def rround(**kw):
    base = dict(round=3, time_s=0.0, cold_for=2, present_pages=2560, swapped_pages=0, cold_pages=512,
                advised_pages=512, ranges_start=np.array([0x7f0000000000, 0x7f0000400000]),
                ranges_bytes=np.array([1 * MB, 1 * MB]), range_labels=["[anon]", "/lib/x.so"],
                accepted_bytes=2 * MB, reclaimed_pages=500, refault_pages=3, major_faults=7)
    base.update(kw)
    return ReclaimRound(**base)


def test_reclaim_row_and_plan():
    buf = io.StringIO()
    t = ra.reclaim_table(buf)
    t.header()
    ra.reclaim_row(t, rround())
    head, row = buf.getvalue().splitlines()
    assert head.split()[:4] == ["ROUND", "RSS(MiB)", "SWAP(MiB)", "COLD(MiB)"]
    assert row.split() == ["3", "10.00", "0.00", "2.00", "2.00", "2", "1.95", "0.01", "7"]
    assert head.split()[-2] == "MAJFLT"
    plan = ra.reclaim_plan(rround(), "pageout")
    assert plan[0].startswith("round 3: advised 2.00 MiB in 2 ranges (MADV_PAGEOUT)")
    assert plan[1].split() == ["pageout", "0x7f0000000000-0x7f0000100000", "1.00", "MiB", "[anon]"]


def test_plan_lines_show_the_biggest_then_count_the_rest():
    ranges = [("demote", i * MB, (i + 1) * 4096, "[anon]") for i in range(15)]
    lines = ra.plan_lines(ranges)
    assert len(lines) == ra.PLAN_LINES + 1
    assert f"{14 * MB:#014x}" in lines[0]
    assert lines[-1] == f"  ... and 5 more ranges, {sum((i + 1) * 4096 for i in range(5)) / MB:.2f} MiB"


def test_reclaim_round_json_dry_run():
    d = ra.reclaim_round_json(rround(dry_run=True, accepted_bytes=0, reclaimed_pages=0), with_ranges=True)
    assert d["schema"] == ra.RECLAIM_ROUND_SCHEMA and d["dry_run"] is True
    assert d["plan"][1] == {"start": "0x7f0000400000", "bytes": MB, "mapping": "/lib/x.so"}


def test_reclaim_summary_target_gone():
    s = ReclaimSummary(pid=7, comm="w", mode="pageout", dry_run=False, rounds=4, advised_bytes=8 * MB,
                       reclaimed_bytes=8 * MB, refault_bytes=MB, rss_before_bytes=10 * MB, swap_before_bytes=0,
                       rss_after_bytes=None, swap_after_bytes=None, backoffs=0, cold_for_final=2,
                       stop_reason="stopped: process 7 exited during the scan")
    lines = ra.reclaim_summary_lines(s)
    assert lines[0] == "PID 7 (w), 4 rounds, stopped: process 7 exited during the scan"
    assert "came back hot 1.00 MiB (12.50%)" in lines[1]
    assert lines[2] == "RSS 10.00 MiB -> gone; swap 0.00 MiB -> gone"
    j = ra.reclaim_summary_json(s)
    assert j["rss_after_bytes"] is None and j["refault_pct"] == 12.5


def test_tier_summary_names_failures_and_nodes():
    s = TierSummary(pid=7, comm="w", fast=0, slow=1, dry_run=False, rounds=5, promoted_pages=256,
                    demoted_pages=512, failed={"-EACCES": 10, "-EBUSY": 2},
                    pages_by_node_before={0: 1024, 1: 1024}, pages_by_node_after={0: 768, 1: 1280},
                    node_used_before_bytes={0: 100 * MB, 1: 50 * MB}, node_used_after_bytes={0: 99 * MB, 1: 51 * MB},
                    stop_reason="placement settled")
    lines = ra.tier_summary_lines(s)
    assert lines[1] == "promoted 1.00 MiB to node 0, demoted 2.00 MiB to node 1, 12 pages failed"
    assert lines[2].split(":")[0].split() == ["10", "pages", "-EACCES"]
    assert "shared" in lines[2] and "busy" in lines[3]
    assert lines[4].split() == ["NODE", "ROLE", "TARGET_BEFORE(MiB)", "TARGET_AFTER(MiB)", "NODE_USED_BEFORE(MiB)",
                                "NODE_USED_AFTER(MiB)"]
    assert lines[5].split() == ["0", "fast", "4.00", "3.00", "100.00", "99.00"]
    j = ra.tier_summary_json(s)
    assert j["target_bytes_by_node_after"] == {"0": 768 * 4096, "1": 1280 * 4096}


def test_tier_row():
    r = TierRound(round=2, time_s=0.0, hot_pages=256, cold_pages=512, promote_pages=256, demote_pages=256,
                  promoted_pages=250, demoted_pages=256, failed={"-EBUSY": 6}, promote_vpns=np.array([1]),
                  demote_vpns=np.array([2]), plan_ranges=[])
    buf = io.StringIO()
    ra.tier_row(ra.tier_table(buf), r)
    assert buf.getvalue().split() == ["2", "1.00", "2.00", "1.00", "1.00", "1.98", "6", "-EBUSY", "6"]
