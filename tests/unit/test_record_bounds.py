"""Issue 17: the record reader's memory is bounded by the file, and special
files are refused before they are read.

Files are crafted with valid CRCs (recordfile's own frame writer), so the
checks tested are the size checks, not the checksums.  Memory is measured
for real, as the peak RSS of a child process (os.wait4), not estimated.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import zlib

import pytest

from idlemap.formats import record as rf
from idlemap.cli import main
from idlemap.errors import BadInput
from idlemap.formats.record import open_record

BASE = 0x1000_0000


def craft(path, npages: int, rounds: int = 1, zero=(0, 1, 2, 3), meta=None) -> int:
    """A record whose rounds declare ``npages`` pages but store no bitmap
    (all four listed as all-zero): a few hundred bytes that used to ask for
    gigabytes.  Returns the file size."""
    m = {"pid": 1, "comm": "x", "cmdline": [], "kernel": "k", "hostname": "h", "backend": "page_idle",
         "granularity": "page", "page_size": rf.PAGE_SIZE, "interval_s": 1.0, "rounds_planned": None,
         "start_time": 1.0, "tlb_flush": "none", "idlemap_version": "0"}
    m.update(meta or {})
    js = json.dumps(m).encode()
    head = rf.HEADER.pack(rf.MAGIC, 1, 0, 0, len(js))
    out = head + js + rf.U32.pack(zlib.crc32(head + js))
    row = [BASE, BASE + npages * rf.PAGE_SIZE, "rw-p", 0, "00:00", 0, "", "anon"]
    out += rf._frame(b"L", {"layout": 0, "mappings": [row], "spans": [[0, row[0], row[1]]]})
    for r in range(rounds):
        out += rf._frame(b"R", {"round": r, "layout": 0, "wall_time_s": 1.0, "time_s": 1.0, "window_s": 1.0,
                                "rss_bytes": 0, "pss_bytes": -1, "accessed_bytes": 0, "scan_s": 0.0,
                                "npages": npages, "delta": r > 0, "zero": list(zero)},
                         zlib.compress(b""), rf.CODEC_ZLIB)
    with open(path, "wb") as f:
        f.write(out)
    return len(out)


def peak_growth_kib(script: str) -> tuple[int, str]:
    """Run ``script`` in a child; it prints its RSS peak before the part
    measured.  Returns (growth of the peak in KiB, the child's stdout)."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    lines = out.split()
    return int(lines[-1]) - int(lines[0]), out


def test_declared_pages_beyond_the_file_are_refused(tmp_path):
    p = tmp_path / "huge.rec"
    size = craft(p, 1 << 36, rounds=3)            # 256 TiB of pages in ~1 KB: the audit's file
    assert size < 2048
    with pytest.raises(BadInput, match="more than a .*-byte record can hold"):
        open_record(p)


def test_report_on_the_audit_file_is_one_sentence_and_small(tmp_path):
    p = tmp_path / "huge.rec"
    craft(p, 1 << 33, rounds=20)
    growth, out = peak_growth_kib(f"""
        import resource, subprocess, sys, os
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        c = subprocess.Popen([sys.executable, "-m", "idlemap", "report", {str(p)!r}, "hot"],
                             stderr=subprocess.PIPE, text=True)
        err = c.stderr.read()
        _, status, ru = os.wait4(c.pid, 0)
        print(os.waitstatus_to_exitcode(status), repr(err))
        print(ru.ru_maxrss)
    """)
    assert " 65 " in f" {out.split()[1]} "
    assert "Traceback" not in out and "can hold" in out
    assert growth < 200 * 1024          # python + numpy; the audit saw 8.9 GB


def test_reading_at_the_bound_stays_within_it(tmp_path):
    """A file declaring as many pages as its size allows reads, every round,
    within max(READ_RATIO x size, READ_FLOOR): the documented bound."""
    p = tmp_path / "edge.rec"
    size = craft(p, 1, rounds=4)                        # the size barely depends on npages
    npages = max(rf.READ_RATIO * size, rf.READ_FLOOR) // rf.READ_BYTES_PER_PAGE
    size = craft(p, npages, rounds=4)
    bound_kib = max(rf.READ_RATIO * size, rf.READ_FLOOR) // 1024
    growth, _ = peak_growth_kib(f"""
        import resource
        import numpy
        from idlemap.formats.record import open_record
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        rec = open_record({str(p)!r})
        assert len(rec) == 4, len(rec)
        for r in rec.rounds():
            assert r.idle_map.npages == {npages}
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    assert growth <= bound_kib, (growth, bound_kib)
    # ... and one page more is refused
    craft(p, max(rf.READ_RATIO * size, rf.READ_FLOOR) // rf.READ_BYTES_PER_PAGE + 4096, rounds=4)
    with pytest.raises(BadInput, match="can hold"):
        open_record(p)


def test_fifo_is_refused_without_blocking(tmp_path):
    p = tmp_path / "fifo.rec"
    os.mkfifo(p)
    result = {}

    def read():
        try:
            open_record(p)
        except BadInput as e:
            result["err"] = str(e)
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "open_record blocked on a FIFO"
    assert "is a FIFO, not a record file" in result["err"]
    assert stat.S_ISFIFO(os.lstat(p).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.parametrize("minor", [3, 5])          # the null and zero devices, made in tmp_path
def test_character_device_is_refused(tmp_path, minor, capsys):
    p = tmp_path / "dev.rec"
    os.mknod(p, stat.S_IFCHR | 0o444, os.makedev(1, minor))
    assert main(["report", str(p), "info"]) == 65
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a character device, not a record file" in err
    assert stat.S_ISCHR(os.lstat(p).st_mode)


def test_sparse_huge_file_is_not_read_whole(tmp_path):
    """50 GiB, sparse: a valid header, then a hole.  Refused at the first
    frame header (zeros fail its CRC) after reading a few bytes."""
    p = tmp_path / "sparse.rec"
    size = craft(p, 16, rounds=1)
    os.truncate(p, 50 << 30)
    bare = tmp_path / "bare.rec"
    with open(bare, "wb"):
        pass
    os.truncate(bare, 50 << 30)
    growth, out = peak_growth_kib(f"""
        import resource
        from idlemap.errors import BadInput
        from idlemap.formats.record import open_record
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        for path in ({str(p)!r}, {str(bare)!r}):
            try:
                open_record(path)
                print("opened")
            except BadInput as e:
                print("BadInput:", str(e).replace(" ", "_"))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    assert f"corrupt_at_byte_{size}" in out and "not_an_idlemap_record" in out, out
    assert growth < 64 * 1024


@pytest.mark.parametrize("meta, words", [
    ({"start_time": 1e20}, "start_time"),
    ({"start_time": -5.0}, "start_time"),
    ({"interval_s": 1e300}, "interval_s"),
])
def test_absurd_times_are_one_sentence(tmp_path, meta, words, capsys):
    p = tmp_path / "t.rec"
    craft(p, 16, meta=meta)
    assert main(["report", str(p), "info"]) == 65
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("idlemap: ") and words in err and "Traceback" not in err


def test_metadata_length_beyond_the_file(tmp_path):
    p = tmp_path / "m.rec"
    js = b"{}"
    head = rf.HEADER.pack(rf.MAGIC, 1, 0, 0, 15 << 20)        # says 15 MiB of JSON; has 2 bytes
    p.write_bytes(head + js)
    with pytest.raises(BadInput, match="cut short inside its header"):
        open_record(p)


def test_report_refuses_what_would_not_fit_in_memory(tmp_path, capsys):
    """Many rounds over the largest layout the reader allows: the report's
    history would need more than the machine has; one sentence, not OOM."""
    p = tmp_path / "long.rec"
    size = craft(p, 1, rounds=1)
    per_round = craft(p, 1, rounds=2) - size
    # enough rounds that two bit rows each exceed any test machine's memory
    rounds = 4000
    npages = max(rf.READ_RATIO * (size + rounds * per_round), rf.READ_FLOOR) // rf.READ_BYTES_PER_PAGE
    craft(p, npages, rounds=rounds)
    rec = open_record(p)
    need = rec.history_bytes()
    rec.close()
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if need <= avail:
        pytest.skip("this machine could hold that history")
    assert main(["report", str(p), "hot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would need about" in err


def test_file_cut_shorter_while_open_is_one_sentence(tmp_path):
    """The reader holds the file open and reads blobs when rounds are
    decoded: a file truncated meanwhile reads as damage, not as a crash."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import recgen
    p = tmp_path / "r.rec"
    recgen.write(p, recgen.changing_rounds(6))
    rec = open_record(p)
    assert len(rec) == 6
    os.truncate(p, os.path.getsize(p) // 3)
    with pytest.raises(BadInput, match="got shorter"):
        for _ in rec.rounds():
            pass
    rec.close()
