"""Synthetic rounds and record files for the unit tests (no kernel)."""
from __future__ import annotations

import numpy as np

from idlemap.testing import synth
from idlemap.kernel.maps import PAGE_SIZE
from idlemap.formats.record import RecordWriter
from idlemap.records import MappingUsage, Round, WssSample

MiB = 1 << 20
HEAP = 0x5555_0000_0000
DATA = 0x7f00_0000_0000
LIB = 0x7f10_0000_0000


def changing_rounds(n: int = 12, seed: int = 3) -> list[Round]:
    """Rounds whose layout changes: the heap grows at round 3, a library
    appears at round 5 and the data mapping is unmapped at round 9; with
    huge and swapped bits, and pages coming and going."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        maps = [synth.mapping(HEAP, (1 if r < 3 else 2) * MiB, "[heap]")]
        if r < 9:
            maps.append(synth.mapping(DATA, 4 * MiB))
        if r >= 5:
            maps.append(synth.mapping(LIB, 1 * MiB, "/usr/lib/libfoo.so", "r-xp"))
        sp = synth.spans(maps)
        npg = sum(m.npages for m in maps)
        present = rng.random(npg) < 0.8
        acc = present & (rng.random(npg) < 0.3)
        huge = np.zeros(npg, bool)
        huge[:64] = present[:64]
        swapped = ~present & (rng.random(npg) < 0.2)
        out.append(synth.make_round(r, sp, acc, present, huge, swapped))
    return out


def mapping_rounds(n: int = 5) -> list[Round]:
    """clear_refs-style rounds: per-mapping totals only."""
    maps = [synth.mapping(HEAP, 2 * MiB, "[heap]"), synth.mapping(DATA, 8 * MiB)]
    out = []
    for r in range(n):
        by = [MappingUsage(maps[0], 2 * MiB, 2 * MiB, (r % 3) * PAGE_SIZE * 10, 0, 0),
              MappingUsage(maps[1], 8 * MiB, 8 * MiB, r * MiB, 8 * MiB - r * MiB, 4096)]
        s = WssSample(pid=77, backend="clear_refs", time_s=100.0 + r, window_s=1.0, rss_bytes=10 * MiB,
                      pss_bytes=10 * MiB, accessed_bytes=sum(u.accessed_bytes for u in by), by_mapping=by,
                      scan_s=0.01)
        out.append(Round(r, 1.7e9 + r, s))
    return out


def write(path, rounds, granularity="page", close=True) -> RecordWriter:
    w = RecordWriter(str(path), synth.meta(granularity, rounds=len(rounds)), fsync=False)
    for r in rounds:
        w.add(r)
    if close:
        w.close()
    return w


def phase_rounds(n_per_phase: int = 10, pages: int = 4096) -> tuple[list[Round], dict]:
    """Three phases over one anonymous mapping: A, then B, then A∪C."""
    m = synth.mapping(DATA, pages * PAGE_SIZE)
    sp = synth.spans([m])
    A = np.zeros(pages, bool)
    A[0:1024] = True
    B = np.zeros(pages, bool)
    B[1024:2048] = True
    C = np.zeros(pages, bool)
    C[3000:3500] = True
    sets = [A, B, A | C]
    rounds = []
    for r in range(3 * n_per_phase):
        rounds.append(synth.make_round(r, sp, sets[r // n_per_phase].copy()))
    return rounds, {"A": A, "B": B, "C": C, "sets": sets}
