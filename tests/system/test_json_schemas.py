"""The JSON contract (docs/json.md): every schema string a command emits has
a JSON Schema in docs/schemas/, and every command's --json output validates
against the schema it names.  Host commands run here; the ones that need
page_idle (bitmap, reclaim, tier, per-page records) in the vm-marked test."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

# A test dependency (the "test" extra): missing, the tests fail rather than vanish.
import jsonschema  # noqa: E402

from idlemap.testing.workload import Workload  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCHEMAS = os.path.join(ROOT, "docs", "schemas")
HAS_PAGE_IDLE = os.path.exists("/sys/kernel/mm/page_idle/bitmap")
REPORT_KINDS = ("wss", "hot", "cold", "histogram", "heatmap", "info")


def load_schemas() -> dict:
    out = {}
    for path in glob.glob(os.path.join(SCHEMAS, "*.json")):
        with open(path) as f:
            s = json.load(f)
        jsonschema.Draft202012Validator.check_schema(s)
        assert os.path.basename(path) == s["$id"].replace("/", ".v") + ".json", path
        out[s["$id"]] = s
    return out


def emitted_schema_strings() -> set:
    """Every "idlemap.X/N" literal in the package (report's {kind} expanded)."""
    found = set()
    for path in glob.glob(os.path.join(ROOT, "src", "idlemap", "**", "*.py"), recursive=True):
        text = open(path).read()
        for m in re.finditer(r'"(idlemap\.[a-z_.{}]+/\d+)"', text):
            s = m.group(1)
            if "{kind}" in s:
                found |= {s.replace("{kind}", k) for k in REPORT_KINDS}
            else:
                found.add(s)
    return found


def test_every_emitted_schema_has_a_file():
    schemas = load_schemas()
    missing = emitted_schema_strings() - set(schemas)
    assert not missing, f"no docs/schemas file for {sorted(missing)}"


def validate_lines(text: str, schemas: dict, seen: set) -> None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    docs = [json.loads(ln) for ln in lines] if len(lines) > 1 and lines[0].startswith("{") \
        and lines[0].rstrip().endswith("}") else [json.loads(text)]
    for d in docs:
        name = d.get("schema")
        assert name in schemas, f"output names no known schema: {name!r}"
        jsonschema.validate(d, schemas[name])
        seen.add(name)


def idlemap(*args, check=True) -> str:
    p = subprocess.run([sys.executable, "-m", "idlemap", *args], capture_output=True, text=True, timeout=180)
    if check:
        assert p.returncode == 0, (args, p.stderr)
    return p.stdout


@pytest.mark.skipif(HAS_PAGE_IDLE, reason="the host phase: this kernel has page_idle (the vm test covers it)")
def test_host_commands_json_validates(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
    import recgen
    schemas = load_schemas()
    seen: set = set()
    rec = str(tmp_path / "cr.rec")
    with Workload() as w:
        w.map("data", 8)
        w.touch("data")
        pid = str(w.pid)
        validate_lines(idlemap("wss", pid, "0.1", "2", "--json", "--by-mapping"), schemas, seen)
        validate_lines(idlemap("top", "0.2", "1", "--pids", pid, "--json"), schemas, seen)
        validate_lines(idlemap("top", "0.2", "1", "--pids", pid, "--cgroups", "--json"), schemas, seen)
        validate_lines(idlemap("record", pid, "-n", "3", "-i", "0.1", "-o", rec, "--json"), schemas, seen)
        validate_lines(idlemap("hot", pid, "-n", "2", "-i", "0.1", "--json"), schemas, seen)
        validate_lines(idlemap("heatmap", pid, "-n", "2", "-i", "0.1", "--json"), schemas, seen)
    page_rec = str(tmp_path / "p.rec")
    recgen.write(page_rec, recgen.phase_rounds(4)[0])
    for path in (rec, page_rec):
        for kind in REPORT_KINDS:
            validate_lines(idlemap("report", path, kind, "--json"), schemas, seen)
    validate_lines(idlemap("report", page_rec, "advise", "--json"), schemas, seen)
    validate_lines(idlemap("doctor", "--json"), schemas, seen)
    validate_lines(idlemap("vms", "--json"), schemas, seen)
    validate_lines(idlemap("kmod", "status", "--json"), schemas, seen)
    want = {"idlemap.wss/2", "idlemap.wss.summary/2", "idlemap.top/1", "idlemap.record.round/1",
            "idlemap.record.summary/1", "idlemap.doctor/1", "idlemap.vms/1", "idlemap.kmod/1",
            "idlemap.advise/1", *(f"idlemap.report.{k}/1" for k in REPORT_KINDS)}
    assert want <= seen, sorted(want - seen)


@pytest.mark.vm
@pytest.mark.skipif(not HAS_PAGE_IDLE, reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")
def test_vm_commands_json_validates(tmp_path):
    schemas = load_schemas()
    seen: set = set()
    rec = str(tmp_path / "p.rec")
    with Workload() as w:
        a = w.map("data", 8)
        w.touch("data")
        pid = str(w.pid)
        rng = f"{a:#x}-{a + 8 * (1 << 20):#x}"
        validate_lines(idlemap("wss", pid, "0.2", "2", "--json", "--by-mapping"), schemas, seen)
        validate_lines(idlemap("top", "0.2", "1", "--pids", pid, "--json", "--pss"), schemas, seen)
        validate_lines(idlemap("record", pid, "-n", "3", "-i", "0.2", "-o", rec, "--json"), schemas, seen)
        validate_lines(idlemap("bitmap", pid, "-o", str(tmp_path / "b"), "--json"), schemas, seen)
        validate_lines(idlemap("reclaim", pid, "--cold-for", "1", "--period", "0.2", "--count", "2",
                               "--dry-run", "--range", rng, "--json"), schemas, seen)
        nodes = sorted(int(d[4:]) for d in os.listdir("/sys/devices/system/node") if re.fullmatch(r"node\d+", d))
        if len(nodes) >= 2:
            validate_lines(idlemap("tier", pid, "--fast", str(nodes[0]), "--slow", str(nodes[1]), "--cold-rounds",
                                   "1", "--count", "2", "--period", "0.2", "--dry-run", "--range", rng, "--json"),
                           schemas, seen)
    for kind in REPORT_KINDS:
        validate_lines(idlemap("report", rec, kind, "--json"), schemas, seen)
    want = {"idlemap.wss/2", "idlemap.top/1", "idlemap.record.summary/1", "idlemap.bitmap/1",
            "idlemap.reclaim.round/1", "idlemap.reclaim.summary/1", *(f"idlemap.report.{k}/1" for k in REPORT_KINDS)}
    assert want <= seen, sorted(want - seen)
