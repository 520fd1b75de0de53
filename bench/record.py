"""Record file size per round, reader throughput, and report generation time.

    python -m bench.record                    # 4 GiB x 120 rounds, JSON lines + a table
    python -m bench.record --gib 1 --rounds 30 --keep /tmp/bench.rec
    python -m bench.record --markdown docs/performance-record.md

The host has no page_idle, so the rounds are synthesized and written through
the real writer API (RecordWriter.add, the same call `idlemap record` makes),
then read back and reported on through the real reader and report code.
Synthesized process (per scenario): a big anonymous region of --gib GiB, a
64 MiB heap, 40 shared-library mappings of 2 MiB, an 8 MiB stack and a 1 GiB
reserved-but-never-touched region (the heatmap must collapse it).

Scenarios (access pattern of the big region per round):
  stable     the same 10 % hot set every round (contiguous + scattered pages):
             the format's headline case, goal <= 64 KiB per GiB-round
  realistic  10 % always hot, a 20 % warm part whose pages are each touched
             with probability 0.3 per round, 0.5 % random noise elsewhere,
             and a phase change at half time (the hot set moves)
  random     every page touched with probability 0.5 each round: the worst
             case (incompressible), to show the bound

Baselines measured in the same run: the raw size of one round's bitmaps
(4 bitmaps of 1 bit per page, uncompressed) and the same rounds compressed
without the XOR-with-previous-round step, so the ratios say what each part
of the design buys.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

from idlemap.testing import synth
from idlemap.analysis import heatmap as HM
from idlemap.analysis import hotness as H
from idlemap.analysis import wss as W
from idlemap.kernel.maps import PAGE_SHIFT
from idlemap.formats.record import RecordWriter, open_record

from .common import timed_wall_cpu

GiB, MiB = 1 << 30, 1 << 20
SCHEMA = "idlemap.bench.record/1"


def process_layout(gib: float):
    maps = [synth.mapping(0x55550000_0000, 64 * MiB, "[heap]")]
    base = 0x7f00_0000_0000
    maps.append(synth.mapping(base, int(gib * GiB)))                       # the big region
    maps.append(synth.mapping(base + int(gib * GiB) + 2 * GiB, 1 * GiB))   # reserved, never touched
    lib = base + int(gib * GiB) + 4 * GiB
    for i in range(40):
        maps.append(synth.mapping(lib + i * 4 * MiB, 2 * MiB, f"/usr/lib/x86_64-linux-gnu/lib{i:02d}.so.1",
                                  "r-xp"))
    maps.append(synth.mapping(0x7ffc_0000_0000, 8 * MiB, "[stack]"))
    maps.sort(key=lambda m: m.start)
    return maps


class Synth:
    """Per-round present/accessed arrays over the layout, by scenario."""

    def __init__(self, gib: float, scenario: str, rounds: int, seed: int = 7):
        self.maps = process_layout(gib)
        self.spans = synth.spans(self.maps)
        self.n = sum(m.npages for m in self.maps)
        self.rng = np.random.default_rng(seed)
        self.scenario = scenario
        self.rounds = rounds
        by_size = sorted(self.spans, key=lambda s: -s.npages)
        self.big = next(s for s in self.spans if s.npages == int(gib * GiB) >> PAGE_SHIFT)
        self.reserved = next(s for s in by_size if s is not self.big and s.mapping.kind == "anon"
                             and s.npages == GiB >> PAGE_SHIFT)
        self.present = np.ones(self.n, bool)
        self.present[self.reserved.offset:self.reserved.offset + self.reserved.npages] = False
        st = next(s for s in self.spans if s.mapping.kind == "stack")
        self.present[st.offset:st.offset + st.npages - 64] = False     # only the top 256 KiB of stack
        nb = self.big.npages
        self.hot_scatter = self.rng.choice(nb, nb // 40, replace=False)  # 2.5 % scattered hot pages

    def round(self, r: int) -> np.ndarray:
        acc = np.zeros(self.n, bool)
        b0, nb = self.big.offset, self.big.npages
        big = acc[b0:b0 + nb]
        if self.scenario == "random":
            acc[:] = self.rng.random(self.n) < 0.5
            return acc & self.present
        shift = 0
        if self.scenario == "realistic" and r >= self.rounds // 2:
            shift = nb // 2                      # phase change: the hot set moves
        lo = shift % nb
        big[lo:lo + int(nb * 0.075)] = True      # 7.5 % contiguous hot
        big[(self.hot_scatter + shift) % nb] = True
        # libraries: the first page range of each is code that runs every round
        for s in self.spans:
            if s.mapping.kind == "file":
                acc[s.offset:s.offset + s.npages // 8] = True
        hp = next(s for s in self.spans if s.mapping.kind == "heap")
        acc[hp.offset:hp.offset + hp.npages // 4] = True
        if self.scenario == "realistic":
            w0 = (lo + int(nb * 0.1)) % nb
            wn = int(nb * 0.2)
            warm = self.rng.random(wn) < 0.3
            idx = (np.arange(wn) + w0) % nb
            big[idx[warm]] = True
            noise = self.rng.random(self.n) < 0.005
            acc |= noise
        return acc & self.present


def write_record(path: str, sy: Synth, rounds: int) -> dict:
    enc_s, frame_bytes, raw_round = 0.0, [], 0
    import zlib
    plain_total = 0
    with RecordWriter(path, synth.meta(rounds=rounds), fsync=False) as w:
        for r in range(rounds):
            acc = sy.round(r)
            rnd = synth.make_round(r, sy.spans, acc, sy.present)
            t = time.perf_counter()
            frame_bytes.append(w.add(rnd))
            enc_s += time.perf_counter() - t
            raw_round = 4 * ((sy.n + 7) // 8)
            if r < 8 or r % 15 == 0:
                # baseline: the same bitmaps compressed without the XOR step
                m = rnd.idle_map
                raw = b"".join(np.packbits(b, bitorder="little").tobytes()
                               for b in (m.present & ~m.idle, m.present, m.huge, m.swapped))
                plain_total += len(zlib.compress(raw, 6))
    sampled = min(8, rounds) + len([r for r in range(8, rounds) if r % 15 == 0])
    return {"encode_s": enc_s, "frame_bytes": frame_bytes, "raw_round_bytes": raw_round,
            "no_delta_round_bytes": plain_total / sampled}


class Clock:
    """Wall and CPU time of each step: the CI hosts are shared (other
    developers' QEMU VMs), so wall time there can be several times the CPU
    time; both are reported and the load average with them."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str, fn):
        self.wall[name], self.cpu[name], v = timed_wall_cpu(fn)
        return v

    def total(self, *names: str) -> tuple[float, float]:
        return sum(self.wall[n] for n in names), sum(self.cpu[n] for n in names)


REPORTS = {   # report -> the steps `idlemap report FILE KIND` runs
    "wss": ("open", "build", "wss"),
    "hot": ("open", "build", "stats", "hot"),
    "cold": ("open", "build", "stats", "cold"),
    "histogram": ("open", "build", "stats", "hist", "hist_text"),
    "histogram_png": ("open", "build", "stats", "hist", "hist_png"),
    "heatmap_terminal": ("open", "build", "heat_term_data", "heat_term"),
    "heatmap_png": ("open", "build", "heat_data", "heat_png"),
}


def report_times(path: str, png_dir: str) -> dict:
    """Each report as `idlemap report FILE KIND` computes it: open + build + report."""
    import matplotlib  # noqa: F401  (import cost is not report cost: paid once per process)

    from idlemap.render import heatmap as RH
    from idlemap.render import hotness as RT
    ck = Clock()
    rec = ck("open", lambda: open_record(path))
    n = ck("decode_all", lambda: sum(r.idle_map.npages for r in rec))
    h = ck("build", lambda: H.build_history(rec.packed_rounds(), pid=rec.meta.pid))
    sink = io.StringIO()
    ck("wss", lambda: RT.print_wss(W.wss_report(h), 12, sink))
    stats = ck("stats", lambda: H.page_stats(h))
    ck("hot", lambda: RT.print_ranges("hot", H.hot_ranges(h, stats), 40, "va", sink))
    ck("cold", lambda: RT.print_ranges("cold", H.cold_ranges(h, stats), 40, "va", sink))
    hist = ck("hist", lambda: H.histograms(stats))
    ck("hist_text", lambda: RT.print_histograms(hist, sink))
    ck("hist_png", lambda: RT.histograms_png(hist, os.path.join(png_dir, "histogram.png")))
    d = ck("heat_data", lambda: HM.heatmap(h, rows=320, cols=h.nrounds))
    ck("heat_png", lambda: RH.heatmap_png(d, os.path.join(png_dir, "heatmap.png"),
                                          title="synthetic 4 GiB process (bench/record.py): memory accessed by address and time",
                                          subtitle=f"{h.nrounds} rounds of 1 s, one row = "
                                                   f"{d.shown_bytes / d.rows / 2**20:.1f} MiB"))
    dt = ck("heat_term_data", lambda: HM.heatmap(h, rows=40, cols=100))
    ck("heat_term", lambda: RH.print_heatmap(dt, sink, color=False))
    out = {"decode_pages_per_cpu_s": n / max(ck.cpu["decode_all"], 1e-9),
           "steps_cpu_s": {k: round(v, 4) for k, v in ck.cpu.items()},
           "steps_wall_s": {k: round(v, 4) for k, v in ck.wall.items()}}
    for rep, steps in REPORTS.items():
        w, c = ck.total(*steps)
        out[f"report_{rep}_cpu_s"] = round(c, 4)
        out[f"report_{rep}_wall_s"] = round(w, 4)
    return out


def run(gib: float, rounds: int, scenario: str, keep: str | None, png_dir: str, do_reports: bool) -> dict:
    sy = Synth(gib, scenario, rounds)
    rss = int(sy.present.sum()) << PAGE_SHIFT
    path = keep or tempfile.mktemp(prefix=f"idlemap-bench-{scenario}-", suffix=".rec")
    w = write_record(path, sy, rounds)
    size = os.path.getsize(path)
    fb = w["frame_bytes"]
    steady = fb[1:] if len(fb) > 1 else fb
    rss_gib = rss / GiB
    res = {"schema": SCHEMA, "scenario": scenario, "rounds": rounds, "mapped_gib": round(sy.n * 4096 / GiB, 3),
           "rss_bytes": rss, "file_bytes": size,
           "bytes_per_round": size / rounds,
           "bytes_per_gib_round": size / rounds / rss_gib,
           "steady_bytes_per_gib_round": float(np.mean(steady)) / rss_gib,
           "first_round_bytes": fb[0],
           "raw_bitmaps_per_gib_round": w["raw_round_bytes"] / rss_gib,
           "no_delta_zlib_per_gib_round": w["no_delta_round_bytes"] / rss_gib,
           "encode_ms_per_round": 1000 * w["encode_s"] / rounds}
    if do_reports:
        res.update(report_times(path, png_dir))
    if not keep:
        os.unlink(path)
    return res


def table(rows: list[dict]) -> str:
    lines = [f"{'scenario':<10} {'RSS(GiB)':>8} {'KiB/GiB-round':>13} {'no-XOR':>8} {'raw':>6} "
             f"{'enc(ms/round)':>13} {'decode(Mpages/s)':>16}  " +
             " ".join(f"{k + '(s)':>{max(8, len(k) + 3)}}" for k in REPORTS)]
    for r in rows:
        lines.append(
            f"{r['scenario']:<10} {r['rss_bytes'] / GiB:>8.2f} {r['bytes_per_gib_round'] / 1024:>13.2f} "
            f"{r['no_delta_zlib_per_gib_round'] / 1024:>8.1f} {r['raw_bitmaps_per_gib_round'] / 1024:>6.0f} "
            f"{r['encode_ms_per_round']:>13.1f} {r.get('decode_pages_per_cpu_s', 0) / 1e6:>16.0f}  " +
            " ".join(f"{r.get(f'report_{k}_cpu_s', float('nan')):>{max(8, len(k) + 3)}.2f}" for k in REPORTS))
    lines.append("sizes in KiB per GiB of RSS per round (raw: 4 uncompressed bitmaps; no-XOR: zlib without "
                 "the delta step); report times are CPU seconds (wall times in the JSON)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="size of the big region (default 4)")
    ap.add_argument("--rounds", type=int, default=120, help="rounds (default 120)")
    ap.add_argument("--scenarios", default="stable,realistic,random")
    ap.add_argument("--keep", metavar="DIR", help="keep the record files in DIR")
    ap.add_argument("--png-dir", default=None, help="where the report PNGs go (default: a temp dir)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the results as a markdown table")
    args = ap.parse_args()
    png_dir = args.png_dir or tempfile.mkdtemp(prefix="idlemap-bench-png-")
    rows = []
    for sc in args.scenarios.split(","):
        keep = os.path.join(args.keep, f"{sc}.rec") if args.keep else None
        out_dir = os.path.join(png_dir, sc)
        os.makedirs(out_dir, exist_ok=True)
        r = run(args.gib, args.rounds, sc, keep, out_dir, do_reports=True)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print()
    print(table(rows))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; PNGs in {png_dir}")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n```\n" + table(rows) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
