"""What several benchmarks share: running themselves inside the test VM and
handing their JSON back to the host."""
from __future__ import annotations

import json
import os
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)


def emit_json(doc: dict, out: str | None) -> None:
    """Print the result document (the last thing on stdout, for tools), and
    keep a copy in ``out`` when given."""
    text = json.dumps(doc, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)


def run_in_vm(script: str, args, mem_mib: int, drop: tuple[str, ...] = ("--vm",),
              numa_nodes: int = 1) -> dict | int:
    """Run ``script --here`` in the test VM with this process's arguments;
    return its results.json (also saved to ``args.results``), or an exit
    status when the run failed.  Rows the script streamed to rows.jsonl
    before failing are kept in ``args.results + ".partial"``."""
    from idlemap import vm
    name = os.path.splitext(os.path.basename(script))[0]
    with tempfile.TemporaryDirectory(prefix=f"idlemap-{name}.") as out:
        argv = [vm.real_python(), os.path.abspath(script), "--here", "--result-dir", out, "--no-doc"]
        argv += [a for a in sys.argv[1:] if a not in drop + ("--no-doc",)]   # the host writes the doc
        print(f"running in the test VM ({mem_mib} MiB, TCG): {' '.join(argv[1:])}", flush=True)
        rc = vm.run(argv, mem_mib=mem_mib, rw_dirs=[out], cwd=REPO, timeout_s=args.timeout_s,
                    numa_nodes=numa_nodes)
        path = os.path.join(out, "results.json")
        if rc != 0 or not os.path.exists(path):
            print(f"the run in the VM failed (exit status {rc})", file=sys.stderr)
            _keep_partial(os.path.join(out, "rows.jsonl"), args.results)
            return rc or 1
        with open(path) as f:
            res = json.load(f)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {os.path.relpath(args.results, REPO)}")
    return res


def _keep_partial(rows_path: str, results: str) -> None:
    if not os.path.exists(rows_path):
        return
    with open(rows_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keep = results + ".partial"
    os.makedirs(os.path.dirname(keep), exist_ok=True)
    with open(keep, "w") as f:
        json.dump({"rows": rows, "meta": {"partial": True}}, f, indent=1)
    print(f"kept {len(rows)} rows in {os.path.relpath(keep, REPO)}", file=sys.stderr)


def add_run_arguments(p, doc: str, results: str) -> None:
    """Where a VM-backed bench runs and where its outputs go."""
    p.add_argument("--here", action="store_true", help="run on this kernel instead of the test VM")
    p.add_argument("--vm", action="store_true", help="run in the test VM (the default without page_idle)")
    p.add_argument("--result-dir", help="(internal) where --here writes results.json")
    p.add_argument("--timeout-s", type=float, default=3600)
    p.add_argument("--doc", default=doc)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--results", default=results, help="where the host keeps the raw results (JSON)")
    p.add_argument("--render-only", action="store_true", help="re-render the doc from --results, run nothing")


def elsewhere(args, render, in_vm) -> int | None:
    """Render-only or run in the VM (the host has no page_idle) and return
    the exit status; None: measure here."""
    if args.render_only:
        with open(args.results) as f:
            return render(json.load(f), args)
    if not args.here:
        from idlemap.kernel.page_idle import available
        if args.vm or not available():
            return in_vm(args)
    return None


def save_here(args, rows: list, meta: dict) -> None:
    """In the VM: hand rows and metadata to the host through --result-dir."""
    if args.result_dir:
        with open(os.path.join(args.result_dir, "results.json"), "w") as f:
            json.dump({"rows": rows, "meta": meta}, f)
