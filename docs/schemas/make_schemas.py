"""Writes docs/schemas/*.json (run: python3 docs/schemas/make_schemas.py).

The schemas are kept as data; this script is how they were made and the
easy way to change one consistently (shared pieces: bytes, hex addresses,
the report head)."""
import json, os
# IDLEMAP_SCHEMA_OUT: another folder (tests regenerate into a temp dir and compare)
OUT = os.environ.get("IDLEMAP_SCHEMA_OUT") or os.path.dirname(os.path.abspath(__file__))
I = {"type": "integer"}
N = {"type": "number"}
S = {"type": "string"}
B = {"type": "boolean"}
BYTES = {"type": "integer", "minimum": 0}
BYTES_OR_UNKNOWN = {"type": "integer", "minimum": -1}          # -1: not measured (e.g. PSS under clear_refs)
HEX = {"type": "string", "pattern": "^0x[0-9a-f]+$"}
NULLABLE = lambda t: {"anyOf": [t, {"type": "null"}]}
GRAN = {"enum": ["page", "region", "mapping"]}
# pages move_pages refused, by status name (e.g. EBUSY)
FAILED = {"type": "object", "additionalProperties": I}
TLB = {"tlb_flush": S, "tlb_exact": B}


def obj(props, required=(), **kw):
    d = {"type": "object", "properties": props, "required": list(required)}
    d.update(kw)
    return d


def schema(name, title, props, required, description="", **kw):
    d = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": name, "title": title,
         **({"description": description} if description else {}), "type": "object",
         "properties": {"schema": {"const": name}, **props}, "required": ["schema", *required]}
    d.update(kw)
    fn = name.replace("/", ".v") + ".json"
    with open(os.path.join(OUT, fn), "w") as f:
        json.dump(d, f, indent=1)
        f.write("\n")


MAPPING_WSS = obj({"start": HEX, "end": HEX, "label": S, "kind": S, "rss_bytes": BYTES, "wss_bytes": BYTES,
                   "ref_bytes": {**BYTES, "deprecated": True}, "idle_bytes": BYTES_OR_UNKNOWN},
                  ["start", "end", "label", "kind", "rss_bytes", "wss_bytes"])
schema("idlemap.wss/2", "idlemap wss --json: one line per window",
       {"pid": I, "backend": S, "time": N, "est_s": N, "rss_bytes": BYTES, "pss_bytes": BYTES_OR_UNKNOWN,
        "wss_bytes": BYTES, "ref_bytes": {**BYTES, "deprecated": True, "description": "idlemap.wss/1 name of wss_bytes"},
        "scan_cpu_s": N, **TLB, "address_space": S, "damon": {"type": "object"},
        "by_mapping": {"type": "array", "items": MAPPING_WSS}},
       ["pid", "backend", "est_s", "rss_bytes", "wss_bytes"],
       "wss_bytes: bytes accessed in the window (Gregg's Ref). /1 called it ref_bytes (kept, deprecated).")
summary = {f"wss_{k}_bytes": N for k in ("min", "mean", "max", "p50", "p95")}
schema("idlemap.wss.summary/2", "idlemap wss --json: the last line, over every window",
       {"samples": I, **summary, **{f"ref_{k}_bytes": {**N, "deprecated": True} for k in ("min", "mean", "max", "p50", "p95")},
        "rss_last_bytes": BYTES}, ["samples", *summary, "rss_last_bytes"])
schema("idlemap.demo/2", "idlemap demo --json: one line per window, then the clear_refs line",
       {"backend": S, "window": I, "est_s": N, "true_hot_bytes": BYTES, "measured_hot_bytes": BYTES,
        "error_pct": N, "wss_bytes": BYTES, "rss_bytes": BYTES,
        "process_wss_bytes": {**BYTES, "deprecated": True}, "process_rss_bytes": {**BYTES, "deprecated": True}},
       ["backend", "true_hot_bytes", "measured_hot_bytes", "error_pct"])

PROC = obj({"pid": I, "comm": S, "cgroup": S, "rss_bytes": BYTES, "wss_bytes": BYTES, "cold_bytes": BYTES,
            "wss_pct": N, "pss_bytes": BYTES_OR_UNKNOWN, "wss_pss_bytes": BYTES_OR_UNKNOWN, "window_s": N},
           ["pid", "comm", "rss_bytes", "wss_bytes", "cold_bytes"])
CG = obj({"cgroup": S, "nprocs": I, "rss_bytes": BYTES, "wss_bytes": BYTES, "cold_bytes": BYTES, "wss_pct": N,
          "pss_bytes": BYTES_OR_UNKNOWN, "wss_pss_bytes": BYTES_OR_UNKNOWN},
         ["cgroup", "rss_bytes", "wss_bytes", "cold_bytes"])
GUEST = obj({"pid": I, "wss_bytes": BYTES, "rss_bytes": BYTES, "cold_bytes": BYTES, "ram_bytes": BYTES},
            ["pid", "wss_bytes", "rss_bytes"])
schema("idlemap.top/1", "idlemap top --json: one object per window",
       {"round": I, "time": N, "backend": S, "granularity": GRAN, "window_s": N, "scan_s": N, "frames": I,
        "total_rss_bytes": BYTES, "total_wss_bytes": BYTES, "new_processes": I, "vanished": I, "denied": I,
        "errors": {"type": "array"}, "processes": {"type": "array", "items": PROC},
        "cgroups": {"type": "array", "items": CG}, "guests": {"type": "array", "items": GUEST}, **TLB},
       ["round", "backend", "granularity", "window_s", "total_rss_bytes", "total_wss_bytes", "processes"])

schema("idlemap.reclaim.round/1", "idlemap reclaim --json: one line per round",
       {"round": I, "dry_run": B, "cold_for": I, "present_bytes": BYTES, "swapped_bytes": BYTES, "cold_bytes": BYTES,
        "advised_bytes": BYTES, "ranges": I, "accepted_bytes": I, "reclaimed_bytes": BYTES, "refault_bytes": BYTES,
        "major_faults": I, "refused": {"type": "array"}, "note": S, "plan": {"type": "array"}},
       ["round", "dry_run", "cold_bytes", "advised_bytes", "reclaimed_bytes", "refault_bytes"])
schema("idlemap.reclaim.summary/1", "idlemap reclaim --json: the last line",
       {"pid": I, "comm": S, "mode": S, "dry_run": B, "rounds": I, "advised_bytes": BYTES, "reclaimed_bytes": BYTES,
        "refault_bytes": BYTES, "refault_pct": N, "rss_before_bytes": BYTES, "rss_after_bytes": NULLABLE(BYTES),
        "swap_before_bytes": BYTES, "swap_after_bytes": NULLABLE(BYTES), "backoffs": I, "stop_reason": S, **TLB},
       ["pid", "mode", "dry_run", "rounds", "advised_bytes", "reclaimed_bytes", "refault_bytes"])
schema("idlemap.tier.round/1", "idlemap tier --json: one line per round",
       {"round": I, "dry_run": B, "hot_bytes": BYTES, "cold_bytes": BYTES, "promote_bytes": BYTES,
        "demote_bytes": BYTES, "promoted_bytes": BYTES, "demoted_bytes": BYTES, "failed_pages": FAILED,
        "plan": {"type": "array"}, "fast_capacity_bytes": BYTES},
       ["round", "dry_run", "hot_bytes", "cold_bytes", "promoted_bytes", "demoted_bytes"])
NODES = NULLABLE({"type": "object", "additionalProperties": BYTES})
schema("idlemap.tier.summary/1", "idlemap tier --json: the last line",
       {"pid": I, "comm": S, "fast": I, "slow": I, "dry_run": B, "rounds": I, "promoted_bytes": BYTES,
        "demoted_bytes": BYTES, "failed_pages": FAILED, "target_bytes_by_node_before": NODES,
        "target_bytes_by_node_after": NODES, "node_used_bytes_before": NODES, "node_used_bytes_after": NODES,
        "stop_reason": S, "fast_capacity_bytes": BYTES},
       ["pid", "fast", "slow", "rounds", "promoted_bytes", "demoted_bytes"])
schema("idlemap.reclaim.cgroup.round/1", "idlemap reclaim --cgroup --json: one line per round",
       {"round": I, "procs": I, "memory_bytes": BYTES, "cold_bytes": BYTES, "refault_bytes": BYTES,
        "request_bytes": BYTES, "reclaimed_bytes": I, "step_bytes": BYTES, "note": S, "back_bytes": BYTES,
        "promotion_rate_pct_per_min": N},
       ["round", "memory_bytes", "cold_bytes", "reclaimed_bytes"])
schema("idlemap.reclaim.cgroup.summary/1", "idlemap reclaim --cgroup --json: the last line",
       {"cgroup": S, "rounds": I, "memory_before_bytes": BYTES, "memory_after_bytes": BYTES,
        "requested_bytes": BYTES, "reclaimed_bytes": I, "refault_bytes": BYTES, "backoffs": I, "stop_reason": S,
        "dry_run": B,
        "backend": {"type": "string",
                    "description": "the per-page backend the cgroup's processes were read with (kmod or page_idle)"},
        "via": {"enum": ["reclaim", "pageout"],
                "description": "how each request was written: memory.reclaim, or "
                               "process_madvise(MADV_PAGEOUT) of the pages read cold"},
        "back_bytes": BYTES, "promotion_rate_max_pct_per_min": N, "threshold_floor_rounds": I},
       ["cgroup", "rounds", "memory_before_bytes", "memory_after_bytes", "reclaimed_bytes"])

schema("idlemap.record.round/1", "idlemap record --json: one line per round written",
       {"round": I, "frame_bytes": BYTES, "file_bytes": BYTES, "window_s": N, "rss_bytes": BYTES, "wss_bytes": BYTES},
       ["round", "frame_bytes", "file_bytes", "window_s", "rss_bytes", "wss_bytes"])
schema("idlemap.record.summary/1", "idlemap record --json: the last line",
       {"file": S, "rounds": I, "file_bytes": BYTES, "elapsed_s": N, "end_reason": S},
       ["file", "rounds", "file_bytes", "end_reason"])

SOURCE = obj({"record": S, "pid": I, "comm": S, "backend": S, "granularity": GRAN, "interval_s": N, **TLB},
             ["pid", "backend"])
HEAD = {"source": SOURCE, "granularity": GRAN,
        "round_range": {"type": "array", "items": I, "minItems": 2, "maxItems": 2,
                        "description": "[first round, one past the last] (the text's 'rounds A..B' is inclusive)"}}
HEAD_REQ = ["source", "granularity", "round_range"]
PCT_PROPS = {f"{k}_bytes": N for k in ("p50", "p90", "p95", "p99", "max", "min", "mean")}
PCT = obj(PCT_PROPS, [f"{k}_bytes" for k in ("p50", "p95", "max", "min")])
schema("idlemap.report.wss/1", "idlemap report FILE wss --json",
       {**HEAD, "rounds": I, "interval_mean_s": N, "duration_s": N, "wss": PCT, "anon": PCT, "file": PCT, "rss": PCT,
        "trend": obj({"slope_bytes_per_s": N, "first_quarter_mean_bytes": N, "last_quarter_mean_bytes": N,
                      "change_pct": {**N, "description": "last quarter's mean against the first quarter's, in %"},
                      "direction": {"enum": ["rising", "falling", "flat", "unknown"],
                                    "description": "unknown: fewer than 8 rounds"}}, ["direction"]),
        "series": {"type": "array", "items": obj({"t_s": N, "wss_bytes": BYTES, "rss_bytes": BYTES}, ["t_s", "wss_bytes"])},
        "by_mapping": {"type": "array", "items": obj({"label": S, "kind": S, "start": HEX, "rss_last_bytes": BYTES,
                                                     **PCT_PROPS},
                                                    ["label", "kind", "start"],
                                                    description="the mapping's bytes accessed per round: percentiles, "
                                                                "min, max and mean")}, "png": S},
       [*HEAD_REQ, "rounds", "wss", "rss", "trend", "series", "by_mapping"])
RANGE = obj({"start": HEX, "end": HEX, "size_bytes": BYTES, "pages": I, "count_min": I, "count_max": I,
             "count_mean": N, "mapping": S, "kind": S}, ["start", "end", "size_bytes", "pages", "mapping", "kind"])
MAPROW = obj({"start": HEX, "end": HEX, "mapping": S, "kind": S, "rss_last_bytes": BYTES,
              "wss_p50_bytes": BYTES, "wss_max_bytes": BYTES, "wss_min_bytes": BYTES,
              "cold_bytes": BYTES, "rounds_accessed": I, "idle_rounds": I},
             ["start", "end", "mapping", "kind", "rss_last_bytes", "wss_p50_bytes", "cold_bytes", "rounds_accessed"])
for kind in ("hot", "cold"):
    schema(f"idlemap.report.{kind}/1", f"idlemap report FILE {kind} --json (also idlemap hot{' --cold' if kind == 'cold' else ''} --json)",
           {**HEAD, "threshold": {"type": "object"}, "ranges_total": I, "pages_total": I, "bytes_total": BYTES,
            "ranges": {"type": "array", "items": RANGE}, "mappings_total": I,
            "mappings": {"type": "array", "items": MAPROW}},
           [*HEAD_REQ, "threshold", "bytes_total"],
           "By page or DAMON region: ranges[]; by mapping (clear_refs records): mappings[].",
           oneOf=[{"properties": {"granularity": {"enum": ["page", "region"]}}, "required": ["ranges", "ranges_total", "pages_total"]},
                  {"properties": {"granularity": {"const": "mapping"}}, "required": ["mappings", "mappings_total"]}])
BAR = lambda k: {"type": "array", "items": obj({k: I, "pages": I, "bytes": BYTES}, [k, "pages", "bytes"])}
schema("idlemap.report.histogram/1", "idlemap report FILE histogram --json",
       {**HEAD, "rounds": I, "population_pages": I, "population_bytes": BYTES, "by_count": BAR("count"),
        "by_idle_age": BAR("idle_rounds"), "never_accessed_pages": I, "never_accessed_bytes": BYTES,
        "png": NULLABLE(S)},
       [*HEAD_REQ, "rounds", "population_bytes", "by_count", "by_idle_age", "never_accessed_bytes"])
schema("idlemap.report.heatmap/1", "idlemap report FILE heatmap --json",
       {**HEAD, "rows": I, "cols": I, "pages_per_row": N, "shown_bytes": BYTES,
        "values": {"type": "array", "items": {"type": "array", "items": NULLABLE({"type": "number", "minimum": 0, "maximum": 1})}},
        "row_va_start": {"type": "array", "items": HEX}, "row_va_end": {"type": "array", "items": HEX},
        "col_rounds": {"type": "array", "items": {"type": "array", "items": I}},
        "col_time_s": {"type": "array", "items": N},
        "segments": {"type": "array", "items": obj({"label": S, "kind": S, "row_lo": N, "row_hi": N, "va_start": HEX,
                                                     "va_end": HEX, "shown_bytes": BYTES, "mappings": I},
                                                    ["label", "row_lo", "row_hi", "va_start", "va_end"])},
        "collapsed": {"type": "array"}, "omitted_mappings": I, "png": NULLABLE(S)},
       [*HEAD_REQ, "rows", "cols", "values", "row_va_start", "row_va_end", "col_rounds", "segments"])
schema("idlemap.report.info/1", "idlemap report FILE info --json",
       {"path": S, "size_bytes": BYTES, "format_version": S,
        "meta": {"type": "object", "description": "the record's metadata as written (docs/record-format.md): "
                                                  "pid, comm, backend, granularity, interval_s, tlb_flush, ..."},
        "rounds": I, "complete": {**B, "description": "the recorder wrote its end frame"},
        "end_reason": NULLABLE(S), "truncated_tail_bytes": BYTES},
       ["size_bytes", "format_version"],
       "No report head: neither source nor a top-level granularity (meta.granularity has it).")
THRESHOLD = obj({"rounds": I, "seconds": N, "cold_mean_bytes": BYTES, "cold_end_bytes": BYTES, "promoted_bytes": BYTES,
                 "observed_s": N, "rate_pct_per_min": N},
                ["rounds", "seconds", "cold_mean_bytes", "rate_pct_per_min"])
schema("idlemap.advise/1", "idlemap advise --json, idlemap report FILE advise --json",
       {"granularity": GRAN, "round_range": HEAD["round_range"],
        "rounds": I, "interval_s": N, "working_set_bytes": BYTES, "target_pct_per_min": N,
        "advised": NULLABLE(THRESHOLD), "thresholds": {"type": "array", "items": THRESHOLD}, "png": S,
        "source": obj({"record": S, "pid": I, "comm": S, "cgroup": S, "processes": I, "backend": S,
                       "granularity": GRAN, "interval_s": N,
                       "vm": obj({"vmm": S, "name": S, "accel": S, "ram_bytes": BYTES}, ["vmm", "ram_bytes"]), **TLB}),
        "processes": {"type": "array", "items": obj({"pid": I, "comm": S, "rounds": I, "working_set_bytes": BYTES,
                                                      "advised_rounds": NULLABLE(I),
                                                      "at_group_threshold": NULLABLE(THRESHOLD)},
                                                     ["pid", "working_set_bytes", "at_group_threshold"])}},
       ["rounds", "working_set_bytes", "thresholds"],
       "One process (source.pid; source.vm for a VMM's guest RAM) or, with --cgroup, a cgroup (source.cgroup) "
       "summed over its processes, each in processes[] at the group's advised threshold. source.record: "
       "report FILE advise only; round_range (first round, one past the last): not with --cgroup.")

schema("idlemap.bitmap/1", "idlemap bitmap --json (and FILE.json beside the bitmap)",
       {"pid": I, "comm": S, "pages": I, "present_pages": I, "idle_pages": I, "accessed_pages": I,
        "huge_pages_4k": I, "files": obj({"idle": S, "present": S}, ["idle", "present"]), "bytes_written": BYTES},
       ["pid", "pages", "present_pages", "idle_pages", "files"])
schema("idlemap.mount/1", "idlemap mount --json: the line printed once mounted",
       {"mountpoint": S, "pid": I, "backend": S, "reason": S, "allow_other": B},
       ["mountpoint", "pid", "backend"])
schema("idlemap.vms/1", "idlemap vms [PID] --json",
       {"vmms": {"type": "array", "items": {"type": "object"}}, "pid": I, "vmm": S, "ram_bytes": BYTES,
        "regions": {"type": "array"}},
       [], "Without PID: vmms[]; with PID: that VM's layout.",
       anyOf=[{"required": ["vmms"]}, {"required": ["pid", "ram_bytes", "regions"]}])
schema("idlemap.kmod/1", "idlemap kmod status --json",
       {"kernel": S, "loaded": B, "device": S, "built": S, "headers": B, "refused": S,
        "interface": NULLABLE(I), "speaks": I}, ["kernel", "loaded"])
schema("idlemap.doctor/1", "idlemap doctor --json",
       {"features": {"type": "object"},
        "kmod": {**S, "description": "the idlemap module in one line: loaded, or buildable here, or why not"},
        "auto": {**S, "description": "what --backend auto picks here, and why"},
        "auto_backend": {**NULLABLE(S), "description": "the backend --backend auto picks here; null: none runs"},
        "commands": {"type": "array", "items": {"type": "object"}}},
       ["features"])
