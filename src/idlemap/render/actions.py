"""Text and JSON for the reclaim and tier commands (rounds, plans, summaries)."""
from __future__ import annotations

from io import StringIO
from typing import IO

from ..kernel.maps import PAGE_SIZE
from ..kernel.numa import STATUS_MEANING
from .text import MB, Table, mb

RECLAIM_ROUND_SCHEMA = "idlemap.reclaim.round/1"
RECLAIM_SUMMARY_SCHEMA = "idlemap.reclaim.summary/1"
TIER_ROUND_SCHEMA = "idlemap.tier.round/1"
TIER_SUMMARY_SCHEMA = "idlemap.tier.summary/1"
PLAN_LINES = 10


def pmb(pages: int) -> str:
    return mb(pages * PAGE_SIZE)


# -- reclaim -----------------------------------------------------------------

def reclaim_table(out: IO[str] | None = None, dry_run: bool = False) -> Table:
    act = "PLAN(MiB)" if dry_run else "ADVISED(MiB)"
    return Table([("ROUND", 5), ("RSS(MiB)", 9), ("SWAP(MiB)", 9), ("COLD(MiB)", 9), (act, 12),
                  ("RANGES", 6), ("RECLAIMED(MiB)", 14), ("REFAULT(MiB)", 12), ("MAJFLT", 7), ("NOTE", -1)], out)


def reclaim_row(t: Table, r) -> None:
    t.row([r.round, pmb(r.present_pages), pmb(r.swapped_pages), pmb(r.cold_pages), pmb(r.advised_pages),
           len(r.ranges_start), "-" if r.dry_run else pmb(r.reclaimed_pages), pmb(r.refault_pages),
           r.major_faults, r.note or (f"{len(r.failed)} ranges refused" if r.failed else "")])


def plan_lines(ranges: list[tuple[str, int, int, str]]) -> list[str]:
    """The biggest ranges of a plan (action, first VA, bytes, mapping), one
    line each, then a count of the rest."""
    if not ranges:
        return []
    biggest = sorted(ranges, key=lambda x: -x[2])[:PLAN_LINES]
    lines = [f"  {d:8} {a:#014x}-{a + n:#014x} {n / MB:10.2f} MiB  {label}" for d, a, n, label in biggest]
    if len(ranges) > len(biggest):
        rest = sorted(ranges, key=lambda x: -x[2])[PLAN_LINES:]
        lines.append(f"  ... and {len(rest)} more ranges, {sum(x[2] for x in rest) / MB:.2f} MiB")
    return lines


def reclaim_plan(r, mode: str) -> list[str]:
    ranges = [(mode, int(a), int(n), lab) for a, n, lab in zip(r.ranges_start, r.ranges_bytes, r.range_labels)]
    head = (f"round {r.round}: {'would advise' if r.dry_run else 'advised'} {pmb(r.advised_pages)} MiB "
            f"in {len(ranges)} range{'s' if len(ranges) != 1 else ''} (MADV_{mode.upper()}), "
            f"idle for >= {r.cold_for} rounds:")
    return [head] + plan_lines(ranges) if ranges else []


def reclaim_round_json(r, with_ranges: bool) -> dict:
    d = {"schema": RECLAIM_ROUND_SCHEMA, "round": r.round, "dry_run": r.dry_run, "cold_for": r.cold_for,
         "present_bytes": r.present_pages * PAGE_SIZE, "swapped_bytes": r.swapped_pages * PAGE_SIZE,
         "cold_bytes": r.cold_pages * PAGE_SIZE, "advised_bytes": r.advised_pages * PAGE_SIZE,
         "ranges": len(r.ranges_start), "accepted_bytes": r.accepted_bytes,
         "reclaimed_bytes": r.reclaimed_pages * PAGE_SIZE, "refault_bytes": r.refault_pages * PAGE_SIZE,
         "major_faults": r.major_faults, "refused": [{"start": f"{a:#x}", "bytes": n, "error": e} for a, n, e in r.failed], "note": r.note}
    if with_ranges:
        d["plan"] = [{"start": f"{int(a):#x}", "bytes": int(n), "mapping": lab}
                     for a, n, lab in zip(r.ranges_start, r.ranges_bytes, r.range_labels)]
    return d


def reclaim_summary_json(s) -> dict:
    return {"schema": RECLAIM_SUMMARY_SCHEMA, "pid": s.pid, "comm": s.comm, "mode": s.mode,
            "dry_run": s.dry_run, "rounds": s.rounds, "advised_bytes": s.advised_bytes,
            "reclaimed_bytes": s.reclaimed_bytes, "refault_bytes": s.refault_bytes,
            "refault_pct": round(s.refault_pct, 3), "rss_before_bytes": s.rss_before_bytes,
            "rss_after_bytes": s.rss_after_bytes, "swap_before_bytes": s.swap_before_bytes,
            "swap_after_bytes": s.swap_after_bytes, "backoffs": s.backoffs, "cold_for_final": s.cold_for_final,
            "stop_reason": s.stop_reason, "major_faults": s.major_faults, "tlb_flush": s.tlb_flush,
            "tlb_exact": s.tlb_flush != "none"}


def reclaim_summary_lines(s) -> list[str]:
    after = ("gone" if s.rss_after_bytes is None else f"{mb(s.rss_after_bytes)} MiB")
    swap_after = ("gone" if s.swap_after_bytes is None else f"{mb(s.swap_after_bytes)} MiB")
    lines = [f"PID {s.pid} ({s.comm}), {s.rounds} rounds, {s.stop_reason}"]
    if s.dry_run:
        lines.append("dry run: nothing was advised")
    else:
        what = "reclaimed (no longer resident)" if s.mode == "pageout" else "deactivated (MADV_COLD)"
        lines.append(f"advised {mb(s.advised_bytes)} MiB; {what} "
                     f"{mb(s.reclaimed_bytes if s.mode == 'pageout' else s.advised_bytes)} MiB; "
                     f"came back hot {mb(s.refault_bytes)} MiB ({s.refault_pct:.2f}%)")
    lines.append(f"RSS {mb(s.rss_before_bytes)} MiB -> {after}; swap {mb(s.swap_before_bytes)} MiB -> {swap_after}")
    if not s.dry_run:
        lines.append(f"the target took {s.major_faults} major faults during the run "
                     f"(pages brought back from swap or disk, {pmb(s.major_faults)} MiB at most)")
    if s.tlb_flush == "none":
        lines.append("readings were not TLB-flushed (--unsafe-no-tlb-flush): hot pages may have been paged out")
    if s.backoffs:
        lines.append(f"backed off {s.backoffs} times: a page is now cold after {s.cold_for_final} rounds")
    return lines


# -- tier --------------------------------------------------------------------

def tier_table(out: IO[str] | None = None, dry_run: bool = False) -> Table:
    p = "PLAN_" if dry_run else ""
    return Table([("ROUND", 5), ("HOT(MiB)", 9), ("COLD(MiB)", 9), (f"{p}PROMOTE(MiB)", 12 + len(p)),
                  (f"{p}DEMOTE(MiB)", 11 + len(p)), ("MOVED(MiB)", 10), ("FAILED", 6), ("WHY", -1)], out)


def tier_row(t: Table, r) -> None:
    why = ", ".join(f"{k} {v}" for k, v in sorted(r.failed.items()))
    t.row([r.round, pmb(r.hot_pages), pmb(r.cold_pages), pmb(r.promote_pages), pmb(r.demote_pages),
           "-" if r.dry_run else pmb(r.promoted_pages + r.demoted_pages), sum(r.failed.values()), why])


def tier_plan_lines(r, fast: int, slow: int) -> list[str]:
    if not r.plan_ranges:
        return []
    verb = "would move" if r.dry_run else "moved"
    head = (f"round {r.round}: {verb} {pmb(r.promote_pages)} MiB hot to node {fast}, "
            f"{pmb(r.demote_pages)} MiB cold to node {slow}:")
    return [head] + plan_lines(r.plan_ranges)


def tier_round_json(r, with_ranges: bool) -> dict:
    d = {"schema": TIER_ROUND_SCHEMA, "round": r.round, "dry_run": r.dry_run,
         "hot_bytes": r.hot_pages * PAGE_SIZE, "cold_bytes": r.cold_pages * PAGE_SIZE,
         "promote_bytes": r.promote_pages * PAGE_SIZE, "demote_bytes": r.demote_pages * PAGE_SIZE,
         "promoted_bytes": r.promoted_pages * PAGE_SIZE, "demoted_bytes": r.demoted_pages * PAGE_SIZE,
         "failed_pages": r.failed}
    if r.capacity_pages is not None:
        d["fast_capacity_bytes"] = r.capacity_pages * PAGE_SIZE
    if with_ranges:
        d["plan"] = [{"direction": d_, "start": f"{a:#x}", "bytes": n, "mapping": lab}
                     for d_, a, n, lab in r.plan_ranges]
    return d


def _nodes_json(d: dict[int, int] | None) -> dict | None:
    return None if d is None else {str(k): v * PAGE_SIZE for k, v in sorted(d.items())}


def tier_summary_json(s) -> dict:
    return {"schema": TIER_SUMMARY_SCHEMA, "pid": s.pid, "comm": s.comm, "fast": s.fast, "slow": s.slow,
            "dry_run": s.dry_run, "rounds": s.rounds, "promoted_bytes": s.promoted_pages * PAGE_SIZE,
            "demoted_bytes": s.demoted_pages * PAGE_SIZE, "failed_pages": s.failed,
            "target_bytes_by_node_before": _nodes_json(s.pages_by_node_before),
            "target_bytes_by_node_after": _nodes_json(s.pages_by_node_after),
            "node_used_bytes_before": {str(k): v for k, v in s.node_used_before_bytes.items()},
            "node_used_bytes_after": {str(k): v for k, v in s.node_used_after_bytes.items()},
            "stop_reason": s.stop_reason,
            **({} if s.capacity_pages is None else {"fast_capacity_bytes": s.capacity_pages * PAGE_SIZE})}


def tier_summary_lines(s) -> list[str]:
    lines = [f"PID {s.pid} ({s.comm}), {s.rounds} rounds, {s.stop_reason}"]
    if s.dry_run:
        lines.append("dry run: nothing was moved")
    else:
        lines.append(f"promoted {pmb(s.promoted_pages)} MiB to node {s.fast}, "
                     f"demoted {pmb(s.demoted_pages)} MiB to node {s.slow}, "
                     f"{sum(s.failed.values())} pages failed")
    if s.capacity_pages is not None:
        lines.append(f"capacity on node {s.fast}: {pmb(s.capacity_pages)} MiB (the hottest pages that fit)")
    for name, n in sorted(s.failed.items(), key=lambda x: -x[1]):
        lines.append(f"  {n:>8} pages {name}: {STATUS_MEANING.get(name, '')}".rstrip(": "))
    nodes = sorted(set(s.pages_by_node_before) | set(s.pages_by_node_after or {}) | {s.fast, s.slow})
    t_rows = []
    for n in nodes:
        role = "fast" if n == s.fast else ("slow" if n == s.slow else "")
        after = "gone" if s.pages_by_node_after is None else pmb(s.pages_by_node_after.get(n, 0))
        used_b = mb(s.node_used_before_bytes[n]) if n in s.node_used_before_bytes else "-"
        used_a = mb(s.node_used_after_bytes[n]) if n in s.node_used_after_bytes else "-"
        t_rows.append([n, role, pmb(s.pages_by_node_before.get(n, 0)), after, used_b, used_a])
    buf = StringIO()
    t = Table([("NODE", 4), ("ROLE", 4), ("TARGET_BEFORE(MiB)", 18), ("TARGET_AFTER(MiB)", 17),
               ("NODE_USED_BEFORE(MiB)", 21), ("NODE_USED_AFTER(MiB)", 20)], buf)
    t.header()
    for row in t_rows:
        t.row(row)
    return lines + buf.getvalue().rstrip("\n").split("\n")

