"""The layout is the architecture: imports go down the layers only.

Static checks read every import of src/idlemap (lazy ones inside functions
too: a lazy import upwards is still a cycle, only a later one); the two
subprocess checks look at what a pure import and an offline report really
load.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "idlemap"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """idlemap modules (or packages) that ``path`` imports, anywhere in it."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("idlemap"):
                continue
            for alias in node.names:       # `from . import tlb` imports idlemap.tlb
                sub = f"{target}.{alias.name}"
                is_mod = (SRC / (sub.replace(".", "/") + ".py")).exists() or (SRC / sub.replace(".", "/")).is_dir()
                out.add(sub if is_mod else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("idlemap"))
    return out


GRAPH = {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(sources, forbidden) -> list[str]:
    return sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if _under(m, sources)
                  for t in ts if _under(t, forbidden))


def test_graph_is_read():
    assert "idlemap.analysis.hotness" in GRAPH and "idlemap.records" in GRAPH["idlemap.analysis.hotness"]


def test_analysis_and_record_format_import_no_engine():
    """Pure code and the record format never reach for the scanner, a
    backend, a service or a command (an offline report needs none)."""
    up = ["idlemap.scan", "idlemap.backends", "idlemap.services", "idlemap.commands", "idlemap.bitmap"]
    assert _violations(["idlemap.analysis", "idlemap.records", "idlemap.formats"], up) == []


def test_kernel_layer_imports_nothing_above_it():
    bad = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if _under(m, ["idlemap.kernel"])
                 for t in ts if not _under(t, ["idlemap.kernel", "idlemap.errors"]))
    assert bad == []


def test_records_sit_on_the_kernel_layer_only():
    bad = sorted(t for t in GRAPH["idlemap.records"] if not _under(t, ["idlemap.kernel", "idlemap.errors"]))
    assert bad == []


def test_vm_targets_and_backends_do_not_import_each_other_both_ways():
    """backends/system.py asks idlemap.vm where a VMM's guest RAM is; so
    the vm package (discovery and GPA arithmetic) must not import a backend
    (GuestBackend lives in backends/guest.py)."""
    assert _violations(["idlemap.vm"], ["idlemap.backends", "idlemap.scan", "idlemap.bitmap"]) == []


def _unit(m: str) -> str:
    """The layer a module belongs to: its folder (idlemap.kernel.maps ->
    kernel) or, for a top-level module, itself (idlemap.scan -> scan)."""
    parts = m.split(".")
    return parts[1] if len(parts) > 1 else m


def test_no_import_cycles_between_layers():
    """Tarjan over the folder/module graph (lazy imports included).  Left
    out: the package root, whose lazy attributes are the public API
    (`from idlemap import open_record`), and imports inside one folder
    (commands borrow from each other; that is glue, not layering)."""
    graph: dict[str, set[str]] = {}
    for m, ts in GRAPH.items():
        if m == "idlemap":
            continue
        graph.setdefault(_unit(m), set()).update(
            _unit(t) for t in ts if t != "idlemap" and _unit(t) != _unit(m))
    for ts in list(graph.values()):
        for t in ts:
            graph.setdefault(t, set())
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


# What a subprocess loaded, printed as JSON at exit: the modules of idlemap.
_RUNNER = r"""
import atexit, json, runpy, sys
atexit.register(lambda: sys.stderr.write("\nLOADED " + json.dumps(
    sorted(m for m in sys.modules if m == "idlemap" or m.startswith("idlemap."))) + "\n"))
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    sys.argv = ["idlemap"] + sys.argv[1:]
    runpy.run_module("idlemap", run_name="__main__")
"""


def _loaded(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _RUNNER, *args], capture_output=True, text=True, env=env,
                       timeout=120)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("LOADED ")]
    assert line, p.stderr
    return p, json.loads(line[-1][len("LOADED "):])


def test_package_import_is_lazy():
    """`import idlemap` (a workload child, cli.main before its signal
    handlers) pays for no numpy, bitmap or record reader."""
    p, mods = _loaded("-c", "import idlemap")
    assert p.returncode == 0, p.stderr
    assert mods == ["idlemap", "idlemap.errors"]


def test_pure_analysis_import_loads_no_backend():
    p, mods = _loaded("-c", "import idlemap.analysis.hotness")
    assert p.returncode == 0, p.stderr
    assert [m for m in mods if _under(m, ["idlemap.backends", "idlemap.scan", "idlemap.bitmap"])] == []
    # 9 idlemap modules when this test was written (29 before the layering
    # of issue 15): a jump means something pulled a layer back in.
    assert len(mods) <= 12, mods


@pytest.mark.parametrize("kind", ["info", "wss", "hot"])
def test_offline_report_loads_no_backend(tmp_path, kind):
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import recgen
    finally:
        sys.path.pop(0)
    rec = tmp_path / "a.rec"
    recgen.write(rec, recgen.changing_rounds(6))
    p, mods = _loaded("report", str(rec), kind)
    assert p.returncode == 0, p.stderr
    assert [m for m in mods if _under(m, ["idlemap.backends", "idlemap.scan", "idlemap.bitmap",
                                          "idlemap.services"])] == []


def test_testing_workloads_sit_below_the_backends():
    """A workload child imports idlemap.testing.workload: it must stay lean
    and never pull a backend or a service into the measured process."""
    up = ["idlemap.backends", "idlemap.scan", "idlemap.bitmap", "idlemap.services", "idlemap.commands"]
    assert _violations(["idlemap.testing"], up) == []
