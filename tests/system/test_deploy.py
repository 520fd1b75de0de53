"""deploy/ works as shipped (issue 16, item 7): the Dockerfile builds from
this repository (its COPY/RUN paths checked against the repo; built and run
where a container engine answers), the systemd unit's Documentation= is a
file its install steps install and the unit verifies, the DaemonSet has
probes and no service-account token, both run the exporter with options it
accepts, and every Grafana panel has data from an exporter run with the
shipped options, on a real Prometheus."""
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from fleet_helpers import HotSet, Prometheus, needs_prometheus, start_exporter, stop_process

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "idlemap-exporter.service"


# -- Dockerfile -------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuations joined."""
    out = []
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def dockerignored() -> list[str]:
    p = REPO / ".dockerignore"
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")] \
        if p.exists() else []


def test_dockerfile_copies_this_repository_and_installs_it():
    steps = dockerfile()
    ops = [op for op, _ in steps]
    assert ops[0] == "FROM" and "COPY" in ops and "RUN" in ops and "ENTRYPOINT" in ops
    ignored = dockerignored()
    dests = {}
    for op, args in steps:
        if op != "COPY":
            continue
        parts = [a for a in shlex.split(args) if not a.startswith("--")]
        *srcs, dest = parts
        for src in srcs:
            # the build context is the repository root (docs/fleet.md's command)
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert src.strip("./") not in ignored, f"COPY {src}: excluded by .dockerignore"
            dests[dest.rstrip("/")] = REPO / src
    # .dockerignore must not drop what the install needs
    for needed in ("src", "pyproject.toml", "README.md"):
        assert needed not in ignored
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    runs = " ".join(args for op, args in steps if op == "RUN")
    installs = re.findall(r"pip install [^&;]*?'?(/[\w/]+)(?:\[([\w,]+)\])?'?(?:\s|$)", runs)
    assert installs, f"no `pip install /PATH[extras]` in RUN: {runs}"
    for path, extra in installs:
        assert path in dests, f"pip installs {path}, which no COPY fills"
        assert (dests[path] / "pyproject.toml").exists(), f"{path} holds no pyproject.toml"
        for e in filter(None, (extra or "").split(",")):
            assert e in extras, f"extra [{e}] is not in pyproject.toml"
    assert "exporter" in (installs[0][1] or ""), "the image needs the exporter extra"
    assert "pip install idlemap" not in runs and "'idlemap[" not in runs, "installs from a package index"
    entry = json.loads(next(args for op, args in steps if op == "ENTRYPOINT"))
    assert entry[0] in pyproject["project"]["scripts"]


def test_fleet_md_shows_the_shipped_dockerfile():
    doc = (REPO / "docs" / "fleet.md").read_text()
    block = re.search(r"```dockerfile\n(.*?)```", doc, re.S)
    assert block, "docs/fleet.md has no ```dockerfile block"
    shown = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    shipped = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert shown == shipped
    assert "docker build -f deploy/Dockerfile" in doc


def _engine():
    for tool in ("docker", "podman"):
        exe = shutil.which(tool)
        if exe and subprocess.run([exe, "info"], capture_output=True, timeout=30).returncode == 0:
            return exe
    return None


def test_dockerfile_builds_and_runs_where_an_engine_answers():
    exe = _engine()
    if exe is None:
        pytest.skip("no container engine answers here (docker/podman info fails): the build is not run; "
                    "test_dockerfile_copies_this_repository_and_installs_it checks its paths")
    tag = "idlemap-test:deploy"
    b = subprocess.run([exe, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(REPO)],
                       capture_output=True, text=True, timeout=1800)
    assert b.returncode == 0, b.stderr[-3000:]
    r = subprocess.run([exe, "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("idlemap "), r.stderr


# -- systemd unit ---------------------------------------------------------------------
def unit_values(key: str) -> list[str]:
    return [ln.split("=", 1)[1].strip() for ln in UNIT.read_text().splitlines() if ln.startswith(key + "=")]


def exporter_args_accepted(argv: list[str]) -> None:
    from idlemap.cli import build_parser
    args = build_parser("exporter").parse_args(argv)
    assert args.command == "exporter" if hasattr(args, "command") else True


def test_unit_documentation_is_a_file_its_install_steps_install():
    docs = unit_values("Documentation")
    assert docs
    fleet = (REPO / "docs" / "fleet.md").read_text()
    for d in docs:
        assert d.startswith("file://") or d.startswith("man:"), d
        if d.startswith("file://"):
            path = d[len("file://"):]
            # an install line, in the unit's header and in docs/fleet.md, puts a repository file there
            pat = re.compile(r"install -D -m 644 (\S+) " + re.escape(path))
            m = pat.search(UNIT.read_text())
            assert m and (REPO / m.group(1)).is_file(), f"nothing installs {path}"
            assert pat.search(fleet), f"docs/fleet.md does not install {path}"


def test_unit_execstart_options_are_accepted_and_unit_verifies(tmp_path):
    (cmd,) = unit_values("ExecStart")
    argv = shlex.split(cmd)
    assert argv[0].endswith("/idlemap") and argv[1] == "exporter"
    exporter_args_accepted(argv[1:])
    sa = shutil.which("systemd-analyze")
    if sa is None:
        pytest.skip("systemd-analyze is not installed")
    # The binary path is the install's; verify every other directive.
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(argv[0], "/bin/true"))
    r = subprocess.run([sa, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# -- DaemonSet ----------------------------------------------------------------------------
def daemonset() -> dict:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()))
    (ds,) = [d for d in docs if d and d.get("kind") == "DaemonSet"]
    return ds


def test_daemonset_probes_token_and_args():
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    port_names = {p["name"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert probe in c, probe
        port = c[probe]["httpGet"]["port"]
        assert port in port_names or port == 9466
        assert c[probe]["httpGet"]["path"] == "/metrics"
    argv = [a.replace("$(NODE_IP)", "10.0.0.1") for a in c["args"]]
    assert argv[0] == "exporter"
    exporter_args_accepted(argv)


def shipped_exporter_options() -> list[str]:
    """The options both shipped setups run with (unit and DaemonSet agree),
    less where to listen and how long a window is (the test's own)."""
    (cmd,) = unit_values("ExecStart")
    unit = shlex.split(cmd)[2:]
    ds = [a for a in daemonset()["spec"]["template"]["spec"]["containers"][0]["args"][1:]]

    def strip(argv):
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
                continue
            if a in ("--listen", "--interval"):
                skip = True
                continue
            if a.startswith("--listen=") or a.startswith("--interval="):
                continue
            out.extend(a.split("=", 1) if a.startswith("--") and "=" in a else [a])
        return out
    u, d = strip(unit), strip(ds)
    assert u == d, f"the unit runs {u}, the DaemonSet {d}"
    return u


@needs_prometheus
def test_every_dashboard_panel_has_data_in_the_shipped_configuration(tmp_path):
    opts = shipped_exporter_options()
    assert "--cgroups" in opts            # what made "Top processes by cold memory" empty before
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    panels = [(p["title"], t["expr"].replace("$instance", ".*").replace("$job", ".*"))
              for p in dash["panels"] for t in p.get("targets", [])]
    exp = None
    with HotSet() as w:
        try:
            exp, port = start_exporter("--interval", "1", "--pids", str(w.pid), "--backend", "clear_refs", *opts)
            with Prometheus(tmp_path, [f"127.0.0.1:{port}"]) as prom:
                prom.wait_query("idlemap_cgroup_wss_bytes", lambda r: len(r) >= 1, 120)
                # rate() needs two samples of every counter in its range.
                prom.wait_query("count_over_time(idlemap_scan_errors_total[5m])",
                                lambda r: bool(r) and all(float(x["value"][1]) >= 2 for x in r), 120)
                empty = []
                for title, expr in panels:
                    d = prom.api("/api/v1/query", query=expr)
                    assert d["status"] == "success", (title, expr, d)
                    if not d["data"]["result"]:
                        empty.append(title)
                # a changed --interval keeps the series: no window label anywhere
                labels = prom.api("/api/v1/labels")["data"]
        finally:
            if exp is not None:
                stop_process(exp)
    assert not empty, f"panels without data in the shipped configuration: {empty}"
    assert "window" not in labels
