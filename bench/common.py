"""What the benchmarks share: where the tree is, running in the test VM,
timing, and handing their JSON back to the host.

Every bench is a module of the ``bench`` package, run from the repository
root as ``python -m bench.NAME``; idlemap itself is importable because
scripts/setup.sh installs it editable, so no bench finds the source tree
through sys.path."""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)


def use_system_test_helpers() -> None:
    """Make tests/system's helpers (fleet_helpers: the same targets the VM
    tests use) importable; they are test code, not part of the package."""
    path = os.path.join(REPO, "tests", "system")
    if path not in sys.path:
        sys.path.insert(0, path)


# -- timing: wall time unless the name says otherwise -----------------------------------

def timed(fn):
    """Wall seconds of one call of ``fn`` (perf_counter), and its value."""
    t0 = time.perf_counter()
    v = fn()
    return time.perf_counter() - t0, v


def timed_wall_cpu(fn):
    """Wall and CPU seconds (this process's, process_time) of one call of
    ``fn``, and its value: on a shared host wall time can be several times
    the CPU time, so the benches that run there report both."""
    w, c = time.perf_counter(), time.process_time()
    v = fn()
    return time.perf_counter() - w, time.process_time() - c, v


def median_wall_s(fn, reps: int) -> float:
    """Median wall seconds of ``reps`` calls of ``fn``."""
    return statistics.median(timed(fn)[0] for _ in range(reps))


# -- the test VM -------------------------------------------------------------------------

def vm_accel() -> str:
    """"kvm" or "tcg": what the test VM will run on (IDLEMAP_VM_ACCEL, else
    whether KVM is usable here), for the benches' logs and results."""
    accel = os.environ.get("IDLEMAP_VM_ACCEL", "auto")
    if accel == "auto":
        from idlemap.testvm import _kvm_usable
        accel = "kvm" if _kvm_usable() else "tcg"
    return accel


def vm_run(module: str, args: list[str], *, mem_mib: int, cpus: int = 2, numa_nodes: int = 1,
           rw_dirs: tuple[str, ...] | list[str] = (), timeout_s: float = 1800,
           env: dict[str, str] | None = None, kernel: str | None = None, initrd: str | None = None,
           what: str = "the test VM") -> int:
    """Run ``python -m bench.MODULE ARGS`` in the test VM, from the
    repository root; its exit status.  The one way a bench enters the VM.
    ``kernel``/``initrd``: another kernel than the project's (e.g. a Debian
    stock one, idlemap.testvm.stock), named by ``what`` in the log."""
    from idlemap import testvm
    argv = [testvm.real_python(), "-m", f"bench.{module}", *args]
    print(f"running in {what} ({mem_mib} MiB, {vm_accel().upper()}): {' '.join(argv[1:])}", flush=True)
    return testvm.run(argv, mem_mib=mem_mib, cpus=cpus, numa_nodes=numa_nodes, rw_dirs=list(rw_dirs),
                      cwd=REPO, timeout_s=timeout_s, env=env, kernel=kernel, initrd=initrd)


def run_in_vm(module: str, args, mem_mib: int, drop: tuple[str, ...] = ("--vm",),
              numa_nodes: int = 1, **vm_kw) -> dict | int:
    """Run ``bench.MODULE --here`` in the test VM with this process's
    arguments; return its results.json (also saved to ``args.results``), or
    an exit status when the run failed.  Rows the module streamed to
    rows.jsonl before failing are kept in ``args.results + ".partial"``.
    ``vm_kw``: the other :func:`vm_run` options (kernel, initrd, env, what)."""
    with tempfile.TemporaryDirectory(prefix=f"idlemap-{module}.") as out:
        rest = [a for a in sys.argv[1:] if a not in drop + ("--no-doc",)]   # the host writes the doc
        rc = vm_run(module, ["--here", "--result-dir", out, "--no-doc", *rest], mem_mib=mem_mib,
                    rw_dirs=[out], timeout_s=args.timeout_s, numa_nodes=numa_nodes, **vm_kw)
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


# -- results -----------------------------------------------------------------------------

def emit_json(doc: dict, out: str | None = None, one_line: bool = False) -> None:
    """Print the result document on stdout (for tools), and keep a copy in ``out`` when given; ``one_line`` for the benches whose
    docs quote the document as one line."""
    text = json.dumps(doc, separators=(",", ":")) if one_line else json.dumps(doc, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)


def row_writer(args):
    """``emit(row)``: print a measured row as one JSON line and, in the VM,
    append it to rows.jsonl in --result-dir, so that a run cut short still
    hands its finished rows back (run_in_vm keeps them as .partial)."""
    partial = open(os.path.join(args.result_dir, "rows.jsonl"), "a") if args.result_dir else None  # noqa: SIM115

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if partial:
            partial.write(line + "\n")
            partial.flush()
    return emit


def measure_here(args, measure, command: str, **settings) -> tuple[list, dict]:
    """Run ``measure(args)`` on this kernel and hand its rows to the host
    (save_here) with what they were measured on and with: the rows and that
    metadata, which the generated doc quotes."""
    t0 = time.monotonic()
    rows = measure(args)
    meta = {"kernel": os.uname().release, "cpus": os.cpu_count(), **settings,
            "runtime_s": round(time.monotonic() - t0), "command": command}
    save_here(args, rows, meta)
    return rows, meta


def save_here(args, rows: list, meta: dict) -> None:
    """In the VM: hand rows and metadata to the host through --result-dir."""
    if args.result_dir:
        with open(os.path.join(args.result_dir, "results.json"), "w") as f:
            json.dump({"rows": rows, "meta": meta}, f)
