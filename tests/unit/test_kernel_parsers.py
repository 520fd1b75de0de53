"""Parsers of /proc text, on text captured from a real process (tests/unit/data)."""
from pathlib import Path

from idlemap.kernel.features import parse_node_list
from idlemap.kernel.maps import classify, parse_maps
from idlemap.kernel.smaps import parse_rollup, parse_smaps

DATA = Path(__file__).parent / "data"


def test_maps_parse_captured():
    maps = parse_maps((DATA / "maps.txt").read_text())
    assert len(maps) == 163
    first = maps[0]
    assert first.start == 0x5597e824c000 and first.end == 0x5597e824d000
    assert first.perms == "r--p" and first.kind == "file" and first.path.endswith("python3.11")
    kinds = {m.kind for m in maps}
    assert {"heap", "stack", "anon", "file", "vdso", "vvar"} <= kinds
    assert all(m.start < m.end for m in maps)
    assert [m.start for m in maps] == sorted(m.start for m in maps)


def test_maps_line_forms():
    text = ("7f00-8000 rw-s 00000000 00:01 42   /dev/shm/my seg (deleted)\n"
            "9000-a000 rw-p 00000000 00:00 0 \n"
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0   [vsyscall]\n"
            "b000-c000 rw-p 00000000 00:00 0   [stack]\n"
            "c000-d000 rw-p 00000000 00:00 0   [anon:jemalloc]\n")
    m = parse_maps(text)
    assert m[0].path == "/dev/shm/my seg (deleted)" and m[0].kind == "shmem" and m[0].shared
    assert m[1].kind == "anon" and m[1].path == "" and m[1].label == "[anon]"
    assert m[2].kind == "vsyscall"
    assert m[3].kind == "stack" and m[3].label == "[stack]"
    assert m[4].kind == "anon"


def test_classify():
    assert classify("/memfd:x (deleted)", "rw-s", 1) == "shmem"
    assert classify("/SYSV00000000 (deleted)", "rw-s", 1) == "shmem"
    assert classify("/usr/lib/libc.so.6", "r-xp", 1) == "file"
    assert classify("[heap]", "rw-p", 0) == "heap"


def test_smaps_parse_captured():
    entries = parse_smaps((DATA / "smaps.txt").read_text())
    assert len(entries) == 163
    assert entries[0].get("Rss") == 4096 and entries[0].get("Pss") == 1024
    # Every mapping's counters are consistent with each other.
    for e in entries:
        assert e.get("Referenced") <= e.get("Rss") <= e.get("Size")
    rollup = parse_rollup((DATA / "smaps_rollup.txt").read_text())
    assert rollup["Rss"] == sum(e.get("Rss") for e in entries)


def test_node_list():
    assert parse_node_list("0\n") == [0]
    assert parse_node_list("0-2,4\n") == [0, 1, 2, 4]
    assert parse_node_list("") == []


def test_swap_configured_agrees_with_meminfo():
    """sysinfo(2)'s totalswap, as the kmod backend reads it on every read,
    says what /proc/meminfo's SwapTotal says on this machine."""
    from idlemap.kernel.features import swap_configured
    with open("/proc/meminfo") as f:
        total = next(int(ln.split()[1]) for ln in f if ln.startswith("SwapTotal:"))
    assert swap_configured() == (total > 0)
