"""Helpers for the system-wide tests (top, exporter, Prometheus): processes
we start and stop by PID, servers on loopback, Prometheus's HTTP API."""
from __future__ import annotations

import json
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from idlemap.kernel import page_idle
from idlemap.testing.child import NoCompiler, end, static_program

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")

# The hot-set workload is a static C program (hotset.c): no interpreter and
# no shared libraries, so everything it maps besides its data is < 1 MiB and
# its WSS is HOT_MIB within that, whatever its neighbours do.  (A Python
# workload maps ~14 MiB of shared library pages; page_idle tracks frames,
# so a neighbour's access to libpython counts for every process mapping
# it, and clear_refs's Referenced includes PG_referenced, which other
# processes' file accesses set -- measured: up to 12 MiB above its hot set.)
HOT_MIB = 256
COLD_MIB = 64

needs_page_idle = pytest.mark.skipif(
    not page_idle.available(),
    reason="needs CONFIG_IDLE_PAGE_TRACKING (no /sys/kernel/mm/page_idle/bitmap); runs in the test VM")


HOTSET_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hotset.c")


def hotset_binary() -> str:
    """hotset.c, built once per source version (gcc -static)."""
    try:
        return static_program(HOTSET_C)
    except NoCompiler as e:
        pytest.skip(str(e))


class HotSet:
    """The hot-set workload: HOT_MIB kept hot, COLD_MIB touched once.
    Killed by PID on exit."""

    def __init__(self, hot_mib: int = HOT_MIB, cold_mib: int = COLD_MIB):
        self.hot_bytes = hot_mib * MiB
        self.cold_bytes = cold_mib * MiB
        self.proc = subprocess.Popen([hotset_binary(), str(hot_mib), str(cold_mib)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.close()
            raise AssertionError(f"hotset did not start: {line!r}")
        self.addr = int(line.split()[1], 16)      # the data: hot set first, then the cold
        self.passes_addr = int(line.split()[2], 16)

    def passes(self) -> int:
        """Full passes over the hot set so far (the loop's own counter)."""
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as f:
            return int.from_bytes(os.pread(f.fileno(), 8, self.passes_addr), "little")

    def close(self) -> None:
        end(self.proc)

    def __enter__(self) -> "HotSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def hot_loop(hot_mib: int, cold_mib: int, placement: str):
    """A HotSet that never pauses; "pinned": it on CPU 0 and the caller on
    CPU 1 (the target never context-switches, so its translations stay in
    the TLB), "unpinned": the scheduler decides."""
    ours = os.sched_getaffinity(0)
    with HotSet(hot_mib, cold_mib) as w:
        if placement == "pinned":
            if os.cpu_count() < 2:
                pytest.skip("one CPU: boot the VM with --cpus 2")
            os.sched_setaffinity(w.pid, {0})
            os.sched_setaffinity(0, {1})
        try:
            yield w
        finally:
            os.sched_setaffinity(0, ours)


class Bystanders:
    """``n`` forked processes, each with its own memory, touching a part of
    it now and then: the "other processes" a system-wide scan must cope
    with.  Stopped by PID (SIGKILL + waitpid) on exit."""

    def __init__(self, n: int, mib: float = 2.0, hot_fraction: float = 0.25, period_s: float = 0.2):
        self.pids: list[int] = []
        self.n, self.mib, self.hot_fraction, self.period_s = n, mib, hot_fraction, period_s

    def start_one(self) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:            # child: never return into pytest
            try:
                os.close(r)
                import mmap
                import numpy as np
                m = mmap.mmap(-1, int(self.mib * MiB))
                a = np.frombuffer(m, dtype=np.uint8)
                a[::PAGE] = 1
                os.write(w, b"k")
                hot = a[:int(a.size * self.hot_fraction):PAGE]
                while True:
                    time.sleep(self.period_s)
                    hot += 1
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 1)            # its memory is touched
        os.close(r)
        self.pids.append(pid)
        return pid

    def stop_one(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        self.pids.remove(pid)

    def __enter__(self) -> "Bystanders":
        try:
            for _ in range(self.n):
                self.start_one()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for pid in list(self.pids):
            self.stop_one(pid)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(p: subprocess.Popen) -> None:
    """SIGTERM by PID, then SIGKILL if it does not go within 20 s."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def start_exporter(*args: str) -> tuple[subprocess.Popen, int]:
    """``idlemap exporter --listen 127.0.0.1:0 ARGS``: the kernel picks a
    free port and the exporter's first stderr line says which."""
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "exporter", "--listen", "127.0.0.1:0", *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    line = p.stderr.readline()
    if "http://127.0.0.1:" not in line:
        stop_process(p)
        raise AssertionError(f"exporter did not start: {line}{p.stderr.read()}")
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    return p, port


def scrape(port: int, timeout_s: float = 30) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        assert r.status == 200
        return r.read().decode()


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Exposition text -> {(name, frozenset(labels.items())): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(m: dict, name: str, **labels) -> list[tuple[dict, float]]:
    want = set((k, str(v)) for k, v in labels.items())
    return [(dict(lab), v) for (n, lab), v in m.items() if n == name and want <= lab]


def wait_for_scans(port: int, scans: int, deadline_s: float = 300) -> dict:
    """Scrape until the exporter has finished ``scans`` windows (bounded)."""
    end = time.monotonic() + deadline_s
    while True:
        m = parse_metrics(scrape(port))
        done = metric(m, "idlemap_scans_total")
        if done and done[0][1] >= scans:
            return m
        if time.monotonic() > end:
            raise AssertionError(f"exporter finished {done} windows in {deadline_s} s, wanted {scans}")
        time.sleep(0.2)


PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is missing (apt-get install prometheus; "
                               "scripts/setup.sh installs it)")


class Prometheus:
    """A real Prometheus server on loopback scraping ``targets`` every 1 s,
    storage in ``tmpdir``; stopped by PID on exit."""

    def __init__(self, tmpdir, targets: list[str]):
        self.port = free_port()
        cfg = tmpdir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: idlemap\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        self.args = [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmpdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.log = tmpdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._logf.close()

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list[dict]:
        d = self.api("/api/v1/query", query=expr)
        assert d["status"] == "success", d
        return d["data"]["result"]

    def wait_query(self, expr: str, ok, deadline_s: float = 300) -> list[dict]:
        """Poll an instant query until ``ok(result)`` (bounded by a deadline)."""
        end = time.monotonic() + deadline_s
        last: object = None
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                last = self.query(expr)
                if ok(last):
                    return last
            except OSError as e:        # not listening yet
                last = e
            time.sleep(0.5)
        raise AssertionError(f"prometheus: {expr} gave {last!r} for {deadline_s} s; "
                             f"log: {self.log.read_text()[-2000:]}")
