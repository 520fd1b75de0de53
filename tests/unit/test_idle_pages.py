"""The idle_pages run-length format: encoder, decoder, and the reference
decoder printed in docs/idle_pages.md."""
from __future__ import annotations

import pathlib
import re
import struct

import numpy as np
import pytest

from idlemap.formats import idle_pages as ip

PAGE = 4096
HP = 512
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "idle_pages.md"


def doc_decoder():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    return ns["decode_idle_pages"]


def make_span(rng, n, start, thp_blocks=(), hole_blocks=()):
    present = rng.random(n) < 0.7
    idle = rng.random(n) < 0.5
    huge = np.zeros(n, dtype=bool)
    a0 = (-(start // PAGE)) % HP
    for b in thp_blocks:
        s = slice(a0 + b * HP, a0 + (b + 1) * HP)
        huge[s] = True
        present[s] = True
        idle[s] = bool(b % 2)          # tails share the head's answer
    for b in hole_blocks:
        present[a0 + b * HP:a0 + (b + 1) * HP] = False
    return present, idle, huge


def expected_bitmaps(spans, lo, hi):
    npg = (hi - lo) // PAGE
    idle = np.ones(npg, dtype=bool)
    pres = np.zeros(npg, dtype=bool)
    for start, p, i, _ in spans:
        o = (start - lo) // PAGE
        idle[o:o + p.size] = np.where(p, i, True)
        pres[o:o + p.size] = p
    return (np.packbits(idle, bitorder="little").view(np.uint64),
            np.packbits(pres, bitorder="little").view(np.uint64))


def test_golden_bytes():
    base = 0x555555400000                      # 2 MiB aligned
    n = HP + 35 + 40 + 7
    present = np.ones(n, dtype=bool)
    idle = np.zeros(n, dtype=bool)
    huge = np.zeros(n, dtype=bool)
    huge[:HP] = True
    idle[:HP] = True
    idle[HP + 35:HP + 75] = True
    present[HP + 75:] = False
    data = ip.encode([(base, present, idle, huge)])
    assert data.hex(" ") == "f0 00 00 40 55 55 55 00 00 41 0f 0f 05 1f 1f 1a 27"


def test_roundtrip_mixed_4k_thp_holes():
    rng = np.random.default_rng(7)
    s1 = 0x7f0000000000 - 37 * PAGE             # not 2 MiB aligned: a partial block first
    spans = [(s1, *make_span(rng, 6 * HP, s1, thp_blocks=(0, 1, 3), hole_blocks=(2,)))]
    s2 = s1 + 6 * HP * PAGE + 300 * PAGE        # a gap: unmapped
    spans.append((s2, *make_span(rng, 1000, s2)))
    s3 = s2 + 1000 * PAGE                       # adjacent to s2: no SET_VA between them
    spans.append((s3, *make_span(rng, 3 * HP, s3, thp_blocks=(1,))))
    data = ip.encode(spans)
    assert data.count(bytes([ip.SET_VA])) >= 2
    ext = ip.decode(data)
    kinds = ext.bytes_by_kind()
    assert kinds["PMD_IDLE"] + kinds["PMD_ACCESSED"] == 4 * HP * PAGE
    assert kinds["PMD_HOLE"] == HP * PAGE
    assert (ext.count >= 1).all() and (ext.count <= 15).all()
    lo = s1 // (64 * PAGE) * (64 * PAGE)
    hi = -(-(s3 + 3 * HP * PAGE) // (64 * PAGE)) * (64 * PAGE)
    got = ip.to_bitmaps(ext, lo, hi)
    want = expected_bitmaps(spans, lo, hi)
    assert np.array_equal(got[0], want[0])
    assert np.array_equal(got[1], want[1])


def test_doc_decoder_agrees():
    rng = np.random.default_rng(3)
    s = 0x7f1234400000
    spans = [(s, *make_span(rng, 4 * HP + 100, s, thp_blocks=(1, 2), hole_blocks=(3,)))]
    data = ip.encode(spans)
    ext = ip.decode(data)
    ref = list(doc_decoder()(data))
    assert [r[0] for r in ref] == ext.va.tolist()
    assert [r[1] for r in ref] == (ext.npages * PAGE).tolist()
    assert [r[3] for r in ref] == (ext.kind >= 3).tolist()


def test_concatenated_reads_decode_as_one_stream():
    # What a reader gets from several reads: each begins with SET_VA.
    rng = np.random.default_rng(5)
    s = 0x10000000
    p, i, h = make_span(rng, 700, s)
    e = ip.encode_span(s, p, i, h)
    cut = 37
    part1 = ip.set_va(s) + e.codes[:cut].tobytes()
    part2 = ip.set_va(int(e.ends[cut - 1])) + e.codes[cut:].tobytes()
    a = ip.decode(part1 + part2)
    b = ip.decode(ip.set_va(s) + e.codes.tobytes())
    assert a.va.tolist() == b.va.tolist() and a.kind.tolist() == b.kind.tolist()


@pytest.mark.parametrize("data, msg", [
    (bytes([0x11]), "does not start with SET_VA"),
    (ip.set_va(0x1000) + bytes([0x10]), "count 0"),
    (ip.set_va(0x1000) + bytes([0x61]), "reserved extent type"),
    (ip.set_va(0x1000) + bytes([0xF1]), "unknown command"),
    (bytes([0xF0, 0, 0]), "cut short"),
    (bytes([0xF0]) + struct.pack("<Q", 0x1001) + bytes([0x01]), "not page aligned"),
])
def test_decoder_rejects(data, msg):
    with pytest.raises(ip.FormatError, match=msg):
        ip.decode(data)


def test_set_va_payload_bytes_are_not_commands():
    # An address whose bytes look like commands/extents must not confuse the decoder.
    va = 0xF0F1_F0F0_0000 & ~0xFFF
    data = ip.set_va(va) + bytes([0x13])
    ext = ip.decode(data)
    assert ext.va.tolist() == [va] and ext.count.tolist() == [3]


def test_long_runs_split_at_15():
    n = 40
    e = ip.encode_span(0x1000, np.ones(n, bool), np.ones(n, bool), np.zeros(n, bool))
    assert e.codes.tolist() == [0x1F, 0x1F, 0x1A]
    assert int(e.ends[-1]) == 0x1000 + n * PAGE
