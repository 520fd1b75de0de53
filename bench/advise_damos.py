"""idlemap's PSI-held cgroup reclaim next to DAMOS pageout with a quota and
a PSI goal, on the same workload (issue 18), in Debian's stock 6.12 kernel:
it has DAMON sysfs with DAMOS quota goals (``some_mem_psi_us``), PSI and the
memory controller, and no page_idle, so idlemap reads pages through its
kernel module (kmod/, built on the host against the stock headers and
loaded in the VM).  Swap is zram (a module of that kernel, in its
initramfs: testvm/stock-kernel.sh).

    python -m bench.advise --damos       # boots stock 6.12, rewrites the DAMOS table in docs/advise.md

The workload (tests/system/schedule.c), one fresh process in a fresh cgroup
per method: a 64 MiB hot set written by a loop that never pauses, 4 warm
groups of 8 MiB (one written every second, so each comes back every 4 s)
and 160 MiB written once and never again (the truly cold set).  Per method:
settle, a baseline of the loop's speed (passes over the hot set per
second, warm groups driven, nothing reclaiming), then the method runs for
the same number of 1 s rounds while the warm groups keep their schedule:

  none     nothing reclaims (the noise floor of the slowdown)
  idlemap  CgroupReclaimer (``reclaim --cgroup``): PSI target 0.1% some avg10,
           advisor target 5%/min, 64 MiB per round at most, written to
           memory.reclaim; idlemap-pageout: the same, ``--via pageout``
  damos    a kdamond on the process (vaddr; 5 ms samples, 100 ms
           aggregation): pageout of regions with no access for >= 4 s
           (the threshold idlemap's advisor picks for this schedule: 4
           rounds of 1 s), quota 64 MiB per 1 s, goal some_mem_psi_us
           1000 us per 1 s (0.1% of the time stalled: the same target)

Figures: memory saved (memory.current before - after), the truly cold set
reclaimed, warm and hot sets resident at the end (pagemap), the target's
slowdown as the mean time of its warm-group writes (each rewrites 8 MiB:
pages taken from it fault back in) against the baseline's, PSI (the
cgroup's some avg10, max over the rounds and at the end, and the stall
time over the run, the cgroup's and the system's -- DAMOS's goal reads the
system's), refaults.  The hot loop's speed (passes per second) is in the
raw results but not the table: under TCG it jumps ~16x after the first
full TLB flush of the guest (QEMU sizes its software TLB at a flush), so
it compares emulator states, not methods.

DAMON is written only in the VM (the run refuses outside it).
"""
from __future__ import annotations

import os
import time

MiB = 1 << 20
PAGE = 4096
KDAMONDS = "/sys/kernel/mm/damon/admin/kdamonds"
U64_MAX = 2 ** 64 - 1
HOT, GROUP, GROUPS, COLD = 64, 8, 4, 160
METHODS = ("none", "idlemap", "idlemap-pageout", "damos")
BEGIN, END = "<!-- bench.advise damos: begin -->", "<!-- bench.advise damos: end -->"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _pressure(path: str) -> tuple[float, int]:
    """(some avg10 %, some total us) of a memory.pressure file."""
    some = _read(path).splitlines()[0].split()
    kv = dict(x.split("=") for x in some[1:])
    return float(kv["avg10"]), int(kv["total"])


class Damos:
    """One kdamond with one DAMOS pageout scheme on ``pid`` (sysfs)."""

    def __init__(self, pid: int, min_age_s: float, quota_bytes: int, psi_us: int, reset_ms: int = 1000,
                 sample_us: int = 5000, aggr_us: int = 100_000):
        if os.environ.get("IDLEMAP_IN_STOCK_VM") != "1":
            raise RuntimeError("the DAMOS run writes DAMON sysfs: only in the stock 6.12 VM")
        self.pid, self.min_age_s, self.quota, self.psi_us = pid, min_age_s, quota_bytes, psi_us
        self.reset_ms, self.sample_us, self.aggr_us = reset_ms, sample_us, aggr_us
        self.scheme = f"{KDAMONDS}/0/contexts/0/schemes/0"

    def _put(self, rel: str, value) -> None:
        path = rel if rel.startswith("/") else f"{KDAMONDS}/{rel}"
        with open(path, "w") as f:
            f.write(f"{value}\n")

    def start(self) -> None:
        if int(_read(f"{KDAMONDS}/nr_kdamonds")) != 0:
            raise RuntimeError("a kdamond exists already: not ours to change")
        self._put("nr_kdamonds", 1)
        ctx = "0/contexts/0"
        self._put("0/contexts/nr_contexts", 1)
        self._put(f"{ctx}/operations", "vaddr")
        for name, v in (("sample_us", self.sample_us), ("aggr_us", self.aggr_us), ("update_us", 1_000_000)):
            self._put(f"{ctx}/monitoring_attrs/intervals/{name}", v)
        self._put(f"{ctx}/targets/nr_targets", 1)
        self._put(f"{ctx}/targets/0/pid_target", self.pid)
        self._put(f"{ctx}/schemes/nr_schemes", 1)
        s = self.scheme
        self._put(f"{s}/action", "pageout")
        age = round(self.min_age_s * 1e6 / self.aggr_us)          # in aggregation intervals
        for what, lo, hi in (("sz", PAGE, U64_MAX), ("nr_accesses", 0, 0), ("age", age, U64_MAX)):
            self._put(f"{s}/access_pattern/{what}/max", hi)
            self._put(f"{s}/access_pattern/{what}/min", lo)
        self._put(f"{s}/quotas/ms", 0)
        self._put(f"{s}/quotas/bytes", self.quota)
        self._put(f"{s}/quotas/reset_interval_ms", self.reset_ms)
        self._put(f"{s}/quotas/goals/nr_goals", 1)
        self._put(f"{s}/quotas/goals/0/target_metric", "some_mem_psi_us")
        self._put(f"{s}/quotas/goals/0/target_value", self.psi_us)
        self._put("0/state", "on")

    def stats(self) -> dict:
        self._put("0/state", "update_schemes_stats")
        out = {k: int(_read(f"{self.scheme}/stats/{k}")) for k in ("nr_applied", "sz_applied", "qt_exceeds")}
        try:
            self._put("0/state", "update_schemes_effective_quotas")
            out["effective_bytes"] = int(_read(f"{self.scheme}/quotas/effective_bytes"))
        except OSError:
            pass
        return out

    def stop(self) -> None:
        try:
            self._put("0/state", "off")
        except OSError:
            pass
        self._put("nr_kdamonds", 0)


def load_module() -> str:
    """Load idlemap's module built on the host for this release; its path."""
    import subprocess
    import sys

    from idlemap import kmodbuild
    from idlemap.kernel import kmod
    ko = kmodbuild.built_path(os.uname().release)
    if not ko.exists():
        raise RuntimeError(f"no module built for {os.uname().release} ({ko}): the host builds it first")
    if not kmod.loaded():
        subprocess.run([sys.executable, "-m", "idlemap", "kmod", "load", "--ko", str(ko)], check=True,
                       stdout=subprocess.DEVNULL)
    return str(ko)


def run_method(method: str, args) -> dict:
    from sched_helpers import Schedule, Shape

    from idlemap.cgroup_reclaim import CgroupReclaimConfig, CgroupReclaimer
    from idlemap.testing.machine import cgroup

    from .advise import present
    shape = Shape(HOT, GROUP, GROUPS, COLD)
    hot, warm, total = HOT * 256, GROUP * GROUPS * 256, shape.total_mib * 256
    n = args.damos_rounds
    with cgroup(f"damos-{method}") as path, Schedule(shape, path) as w:
        w.loop()
        tick = time.monotonic()

        lat: list[float] = []

        def next_round():
            nonlocal tick
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
            t = time.monotonic()
            w.round()                                  # the warm groups' schedule
            lat.append(time.monotonic() - t)

        for _ in range(3):
            next_round()
        p0, t0 = w.passes(), time.monotonic()
        for _ in range(args.damos_base):
            next_round()
        base = (w.passes() - p0) / (time.monotonic() - t0)
        lat_base = sum(lat[3:]) / len(lat[3:])
        del lat[:]
        mem0 = int(_read(f"{path}/memory.current"))
        _, stall0 = _pressure(f"{path}/memory.pressure")
        rf0 = _refaults(path)
        eng = damos = None
        extra: dict = {}
        sys0 = _pressure("/proc/pressure/memory")[1]
        if method.startswith("idlemap"):
            cfg = CgroupReclaimConfig(path=path, target_pct_per_min=5.0, psi_target_pct=args.psi_target,
                                      via="pageout" if method == "idlemap-pageout" else "reclaim")
            eng = CgroupReclaimer(cfg)
            eng.start()
        elif method == "damos":
            damos = Damos(w.pid, 4.0, 64 * MiB, int(args.psi_target / 100 * 1e6))
            damos.start()
        psi_max, per_round = 0.0, []
        p1, t1 = w.passes(), time.monotonic()
        try:
            last = p1
            for _ in range(n):
                next_round()
                note = ""
                if eng is not None:
                    r = eng.round()
                    note = f"T={r.threshold_rounds} ask {r.request_bytes / MiB:.1f} got {r.reclaimed_bytes / MiB:.1f}"
                    note += f" {r.note}" if r.note else ""
                psi, _ = _pressure(f"{path}/memory.pressure")
                psi_max = max(psi_max, psi)
                if damos is not None:
                    st = damos.stats()
                    note = f"applied {st['sz_applied'] / MiB:.1f} quota {st.get('effective_bytes', -1) / MiB:.3f}"
                now = w.passes()
                per_round.append((round(int(_read(f"{path}/memory.current")) / MiB, 1), psi, now - last,
                                  round(lat[-1], 3), note))
                last = now
            speed = (w.passes() - p1) / (time.monotonic() - t1)
            dur = time.monotonic() - t1
            if eng is not None:
                s = eng.summary("done")
                extra = {"backoffs": s.backoffs, "requested_mib": s.requested_bytes / MiB,
                         "backend": s.backend, "tlb_exact": s.tlb.get("tlb_exact")}
            if damos is not None:
                extra = damos.stats()
        finally:
            if eng is not None:
                eng.close()
            if damos is not None:
                damos.stop()
        psi_end, stall1 = _pressure(f"{path}/memory.pressure")
        sys1 = _pressure("/proc/pressure/memory")[1]
        mem1 = int(_read(f"{path}/memory.current"))
        rf = _refaults(path) - rf0
        pres = present(w.pid, w.addr, total)
    return {"run": "damos-pair", "method": method, "rounds": n, "base_rounds": args.damos_base,
            "psi_target": args.psi_target, "memory_before_mib": mem0 / MiB, "memory_after_mib": mem1 / MiB,
            "saved_mib": (mem0 - mem1) / MiB, "cold_reclaimed_pct": 100.0 * (1 - pres[hot + warm:].mean()),
            "warm_resident_pct": 100.0 * pres[hot:hot + warm].mean(), "hot_resident_pct": 100.0 * pres[:hot].mean(),
            "passes_per_s_base": base, "passes_per_s": speed, "slowdown_pct": 100.0 * (1 - speed / base),
            "warm_write_s_base": lat_base, "warm_write_s": sum(lat) / len(lat),
            "warm_slowdown_pct": 100.0 * (sum(lat) / len(lat) / lat_base - 1),
            "system_stall_pct": 100.0 * (sys1 - sys0) / 1e6 / dur,
            "psi_max": max(psi_max, psi_end), "psi_end": psi_end,
            "stall_pct": 100.0 * (stall1 - stall0) / 1e6 / dur, "refault_mib": rf * PAGE / MiB,
            "per_round": per_round, **extra}


def _refaults(path: str) -> int:
    stat = dict(line.split() for line in _read(f"{path}/memory.stat").splitlines())
    return int(stat.get("workingset_refault_anon", 0)) + int(stat.get("workingset_refault_file", 0))


def run_here(args, emit) -> list[dict]:
    from idlemap.testing.machine import zram_swap

    from .common import use_system_test_helpers
    use_system_test_helpers()
    rows = [{"run": "damos-meta", "module": load_module()}]
    emit(rows[0])
    with zram_swap():
        for m in METHODS:
            row = run_method(m, args)
            emit(row)
            rows.append(row)
    return rows


def in_vm(args, render) -> int:
    """Build the module for stock 6.12 on the host, boot that kernel, run
    ``bench.advise --here --damos`` there; render what came back."""
    import sys
    from pathlib import Path

    from idlemap import kmodbuild
    from idlemap.testvm.stock import build_tree, stock_dir, stock_kernel

    from .common import run_in_vm

    def say(line):
        print(line, file=sys.stderr, flush=True)
    d = stock_dir("6.12", progress=say)
    kmodbuild.build(build_tree(Path(d)))
    kernel, initrd = stock_kernel("6.12", progress=say)
    res = run_in_vm("advise", args, 3072, kernel=kernel, initrd=initrd, what="Debian's stock 6.12 VM",
                    env={"IDLEMAP_IN_STOCK_VM": "1", "IDLEMAP_STOCK_DIR": str(d)})
    return res if isinstance(res, int) else render(res, args)


def table(rows: list[dict]) -> list[str]:
    by = {r["method"]: r for r in rows if r.get("run") == "damos-pair"}
    cols = [m for m in METHODS if m in by]
    names = {"none": "nothing", "idlemap": "idlemap via memory.reclaim", "idlemap-pageout": "idlemap via MADV_PAGEOUT",
             "damos": "DAMOS pageout, quota + PSI goal"}
    out = ["| figure | truth | " + " | ".join(names[m] for m in cols) + " |", "|---|---|" + "---|" * len(cols)]

    def line(name, truth, fmt, only=None):
        out.append(f"| {name} | {truth} | "
                   + " | ".join(fmt(by[m]) if only in (None, m) else "" for m in cols) + " |")
    line("memory saved (MiB, memory.current before - after)", f"{COLD}", lambda r: f"{r['saved_mib']:.1f}")
    line(f"truly cold set reclaimed (of {COLD} MiB)", "100%", lambda r: f"{r['cold_reclaimed_pct']:.1f}%")
    line(f"warm set resident at the end (of {GROUP * GROUPS} MiB, each group back every {GROUPS} s)", "100%",
         lambda r: f"{r['warm_resident_pct']:.1f}%")
    line(f"hot set resident at the end (of {HOT} MiB)", "100%", lambda r: f"{r['hot_resident_pct']:.1f}%")
    line("target slowdown: a warm group's write (mean s, against its baseline)", "0%",
         lambda r: f"{r['warm_slowdown_pct']:+.0f}% ({r['warm_write_s']:.3f} s)")
    line("PSI some avg10 of the cgroup, max over the rounds and at the end (%)", f"< {by[cols[0]]['psi_target']:g}",
         lambda r: f"{r['psi_max']:.2f}")
    line("PSI some stall time over the run: cgroup / system (% of the time)", "",
         lambda r: f"{r['stall_pct']:.3f} / {r.get('system_stall_pct', 0):.3f}")
    line("refaults (MiB, memory.stat)", "0", lambda r: f"{r['refault_mib']:.1f}")
    for m in ("idlemap", "idlemap-pageout"):
        if m in by:
            line("idlemap: back-offs / asked (MiB) / backend", "",
                 lambda r: f"{r.get('backoffs')} / {r.get('requested_mib', 0):.1f} / {r.get('backend')}", m)
    if "damos" in by:
        eff = by["damos"].get("effective_bytes")
        line("DAMOS: applied (MiB) / quota exceeded / effective quota at the end (MiB)", "",
             lambda r: f"{r.get('sz_applied', 0) / MiB:.1f} / {r.get('qt_exceeds')} / "
                       f"{'-' if eff is None else f'{eff / MiB:.3f}'}", "damos")
    return out
