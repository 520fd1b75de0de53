"""The fast maps/smaps readers of the kernel layer agree with the full
parsers: on captured files, on a live /proc/self and on made-up lines that
a sloppy parser would get wrong (a file named like a special mapping)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from idlemap.backends.system import MERGE_GAP_PAGES, vma_ranges
from idlemap.kernel import smaps
from idlemap.kernel.maps import PAGE_SHIFT, parse_maps, read_raw, trackable, tracked_bounds
from idlemap.services.procfiles import parse_mapped

DATA = Path(__file__).parent / "data"

TRICKY = (b"00400000-00401000 r--p 00000000 fe:00 12 /tmp/odd [vdso]\n"
          b"00401000-00402000 r--p 00000000 fe:00 13 /tmp/odd name with  spaces\n"
          b"00500000-00600000 ---p 00000000 00:00 0 \n"
          b"00600000-00700000 rw-p 00000000 00:00 0 [anon:[vdso]]\n"
          b"7ffc00000000-7ffc00001000 r--p 00000000 00:00 0                          [vvar]\n"
          b"7ffc00001000-7ffc00002000 r--p 00000000 00:00 0                          [vvar_vclock]\n"
          b"7ffc00002000-7ffc00004000 r-xp 00000000 00:00 0                          [vdso]\n"
          b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n")


def _sources():
    yield "maps.txt", (DATA / "maps.txt").read_bytes()
    yield "tricky", TRICKY
    yield "live", read_raw("self")


@pytest.mark.parametrize("name,data", list(_sources()), ids=lambda v: v if isinstance(v, str) else "")
def test_bounds_agree_with_full_parse(name, data):
    full = [m for m in parse_maps(data) if trackable(m)]
    assert tracked_bounds(data) == [(m.start, m.end) for m in full]
    assert tracked_bounds(data, accessible_only=True) == [(m.start, m.end) for m in full if m.perms[:3] != "---"]
    assert parse_mapped(data) == tracked_bounds(data)


@pytest.mark.parametrize("name,data", list(_sources()), ids=lambda v: v if isinstance(v, str) else "")
def test_system_ranges_agree_with_full_parse(name, data):
    want: list[list[int]] = []
    for m in parse_maps(data):
        if not trackable(m) or m.perms[:3] == "---":
            continue
        first, end = m.start >> PAGE_SHIFT, m.end >> PAGE_SHIFT
        if want and first - (want[-1][0] + want[-1][1]) <= MERGE_GAP_PAGES:
            want[-1][1] = end - want[-1][0]
        else:
            want.append([first, end - first])
    assert vma_ranges(data) == [tuple(w) for w in want]


def test_tricky_names():
    kinds = [m.kind for m in parse_maps(TRICKY)]
    assert kinds == ["file", "file", "anon", "anon", "vvar", "vvar", "vdso", "vsyscall"]
    assert tracked_bounds(TRICKY)[:2] == [(0x400000, 0x401000), (0x401000, 0x402000)]


def test_unpopulated_agrees_with_full_smaps_parse():
    raw = (DATA / "smaps.txt").read_bytes()
    entries = smaps.parse_smaps(raw.decode())
    maps = [e.mapping for e in entries]
    want = {e.mapping.start for e in entries if e.get("Rss") == 0 and e.get("Swap") == 0}
    assert want, "the captured smaps has no empty mapping: the test would prove nothing"
    assert smaps.unpopulated_in(raw, maps) == want
    gone = dataclasses.replace(maps[0], end=maps[0].end + 4096)
    assert smaps.unpopulated_in(raw, [gone]) == set()       # bounds changed since maps: not named
