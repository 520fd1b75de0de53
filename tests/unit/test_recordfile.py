"""The record file: round trip, crash tails, corruption, and fuzzing (no kernel)."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recgen
from idlemap import open_record
from idlemap.formats import record as rf
from idlemap.analysis import hotness as H
from idlemap.analysis import heatmap as HM
from idlemap.analysis import wss as W
from idlemap.errors import BadInput


def same_round(a, b):
    assert a.index == b.index
    assert a.wall_time_s == b.wall_time_s
    sa, sb = a.sample, b.sample
    assert (sa.time_s, sa.window_s, sa.rss_bytes, sa.pss_bytes, sa.accessed_bytes) == \
        (sb.time_s, sb.window_s, sb.rss_bytes, sb.pss_bytes, sb.accessed_bytes)
    assert sa.by_mapping == sb.by_mapping
    ma, mb = sa.idle_map, sb.idle_map
    if ma is None:
        assert mb is None
        return
    assert [(s.mapping, s.start, s.end, s.offset) for s in ma.spans] == \
        [(s.mapping, s.start, s.end, s.offset) for s in mb.spans]
    for f in ("present", "idle", "huge", "swapped"):
        assert np.array_equal(getattr(ma, f), getattr(mb, f)), f
    assert (ma.time_s, ma.window_s, ma.pid) == (mb.time_s, mb.window_s, mb.pid)


def test_round_trip_with_changing_layouts(tmp_path):
    rounds = recgen.changing_rounds()
    p = tmp_path / "x.rec"
    recgen.write(p, rounds)
    rec = open_record(p)
    assert len(rec) == len(rounds) and rec.complete and rec.end_reason == "done"
    assert rec.meta.granularity == "page" and rec.meta.cmdline == ["synthetic", "--workload"]
    back = list(rec)
    for a, b in zip(rounds, back):
        same_round(a, b)
    # a slice decodes the same (delta chain followed from the start)
    for a, b in zip(rounds[7:10], rec.rounds(7, 10)):
        same_round(a, b)


def test_round_trip_mapping_granularity(tmp_path):
    rounds = recgen.mapping_rounds()
    p = tmp_path / "m.rec"
    recgen.write(p, rounds, "mapping")
    rec = open_record(p)
    assert rec.meta.granularity == "mapping" and len(rec) == 5
    for a, b in zip(rounds, rec):
        same_round(a, b)


def test_existing_file_is_kept_numbered(tmp_path):
    p = tmp_path / "x.rec"
    p.write_bytes(b"precious")
    recgen.write(p, recgen.changing_rounds(2))
    assert (tmp_path / "x.rec.1").read_bytes() == b"precious"
    assert len(open_record(p)) == 2
    recgen.write(p, recgen.changing_rounds(3))      # a third run destroys neither earlier one
    assert (tmp_path / "x.rec.1").read_bytes() == b"precious"
    assert len(open_record(tmp_path / "x.rec.2")) == 2
    assert len(open_record(p)) == 3
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def frames_end(path):
    """Offsets where each frame ends (header end first)."""
    data = open(path, "rb").read()
    _, _, _, _, meta_len = rf.HEADER.unpack_from(data)
    off = rf.HEADER.size + meta_len + 4
    ends = [off]
    while off < len(data):
        _, _, _, blen, _ = rf.FRAME.unpack_from(data, off)
        off += rf.FRAME_LEN + blen
        ends.append(off)
    return data, ends


def test_every_truncation_keeps_the_finished_rounds(tmp_path):
    """A recorder killed at any byte: the file opens with every round whose
    frame was completely written, and says it was not closed."""
    rounds = recgen.changing_rounds(6)
    p = tmp_path / "x.rec"
    w = recgen.write(p, rounds, close=False)    # killed: no end frame
    os.close(w._fd)
    data, ends = frames_end(p)
    # kinds of the frames in order, to count the complete round frames
    kinds = []
    for a in ends[:-1]:
        kinds.append(data[a:a + 1])
    cut = tmp_path / "cut.rec"
    for size in range(ends[0], len(data) + 1, 7):
        cut.write_bytes(data[:size])
        rec = open_record(cut)
        whole = sum(1 for k, e in zip(kinds, ends[1:]) if k == b"R" and e <= size)
        assert len(rec) == whole
        assert not rec.complete
        assert rec.truncated_bytes == size - max(e for e in ends if e <= size)
        assert len(list(rec)) == whole          # and they all decode


def test_interrupted_write_is_cut_back(tmp_path, monkeypatch):
    """Ctrl-C between two partial writes of a frame: the writer cuts the
    file back to the last whole frame, so the end frame lands cleanly."""
    rounds = recgen.changing_rounds(4)
    p = tmp_path / "x.rec"
    w = recgen.write(p, rounds[:3], close=False)
    real_write = os.write

    def half_then_interrupt(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        w.add(rounds[3])
    monkeypatch.setattr(os, "write", real_write)
    w.close("interrupted")
    rec = open_record(p)
    assert len(rec) == 3 and rec.complete and rec.end_reason == "interrupted" and rec.truncated_bytes == 0


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.rec"
    recgen.write(p, recgen.changing_rounds(5))
    return p, p.read_bytes()


def one_sentence(exc):
    msg = str(exc.value)
    assert "\n" not in msg and msg[0].islower() or msg[0] == "/"
    return msg


def test_rejects_foreign_and_damaged_files(tmp_path, good):
    p, data = good
    cases = {
        "empty": (b"", "is empty"),
        "foreign": (b"%PDF-1.7 this is not ours" * 4, "not an idlemap record"),
        "random": (os.urandom(4096), "not an idlemap record"),
        "short header": (data[:10], "cut short inside its header"),
        "short meta": (data[:40], "cut short inside its header"),
    }
    for name, (blob, want) in cases.items():
        f = tmp_path / name.replace(" ", "_")
        f.write_bytes(blob)
        with pytest.raises(BadInput) as e:
            open_record(f)
        assert want in one_sentence(e), name


def with_version(data: bytes, major: int, minor: int = 0) -> bytes:
    magic, _, _, flags, meta_len = rf.HEADER.unpack_from(data)
    head = rf.HEADER.pack(magic, major, minor, flags, meta_len)
    end = rf.HEADER.size + meta_len
    body = head + data[rf.HEADER.size:end]
    return body + struct.pack("<I", zlib.crc32(body)) + data[end + 4:]


def test_future_version_and_newer_minor(tmp_path, good):
    p, data = good
    f = tmp_path / "future.rec"
    f.write_bytes(with_version(data, 2, 1))
    with pytest.raises(BadInput) as e:
        open_record(f)
    assert "format version 2.1" in one_sentence(e) and "newer idlemap" in str(e.value)
    # a newer minor version of the same major reads (minors only add optional things)
    f.write_bytes(with_version(data, 1, 7))
    assert len(open_record(f)) == 5


def test_flipped_byte_in_a_frame_is_corruption_not_truncation(tmp_path, good):
    p, data = good
    _, ends = frames_end(p)
    for off in (ends[1] + 3, ends[2] + 20, (ends[2] + ends[3]) // 2):     # header CRC, header, body
        bad = bytearray(data)
        bad[off] ^= 0x40
        f = tmp_path / "bad.rec"
        f.write_bytes(bytes(bad))
        with pytest.raises(BadInput) as e:
            open_record(f)
        assert "is corrupt at byte" in one_sentence(e)
        rec = open_record(f, salvage=True)
        assert rec.damaged_at is not None and len(list(rec)) == len(rec) < 5


def test_other_page_size_is_refused(tmp_path):
    rounds = recgen.changing_rounds(2)
    meta = recgen.synth.meta(rounds=2)
    meta["page_size"] = 65536
    p = tmp_path / "arm.rec"
    with rf.RecordWriter(str(p), meta, fsync=False) as w:
        for r in rounds:
            w.add(r)
    with pytest.raises(BadInput) as e:
        open_record(p)
    assert "65536-byte pages" in one_sentence(e)


def test_missing_and_directory(tmp_path):
    with pytest.raises(BadInput, match="no such record file"):
        open_record(tmp_path / "nope.rec")
    with pytest.raises(BadInput, match="is a directory"):
        open_record(tmp_path)


def test_stable_working_set_costs_almost_nothing(tmp_path):
    """XOR with the previous round: unchanged bitmaps are left out."""
    rounds, _ = recgen.phase_rounds(10, pages=8192)
    p = tmp_path / "x.rec"
    w = rf.RecordWriter(str(p), recgen.synth.meta(), fsync=False)
    sizes = [w.add(r) for r in rounds]
    w.close()
    # rounds 1..9 repeat round 0 exactly: every bitmap is all-zero after XOR
    assert max(sizes[1:10]) < 400 and sizes[10] > sizes[11]


# -- fuzzing ---------------------------------------------------------------
def _exercise(data: bytes) -> None:
    """Everything a report does with a file; only BadInput may come out."""
    try:
        rec = rf.Record("<fuzz>", data)
        rec.describe()
        rounds = list(rec)
        for r in rounds:
            r.sample.by_mapping
        if rounds:
            h = H.build_history(rec.packed_rounds())
            if h.per_page:
                s = H.page_stats(h)
                H.hot_ranges(h, s, 1)
                HM.heatmap(h, rows=16)
            W.wss_report(h)
    except BadInput as e:
        assert str(e) and "\n" not in str(e)


GOOD = None


def good_bytes() -> bytes:
    global GOOD
    if GOOD is None:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "g.rec")
            recgen.write(p, recgen.changing_rounds(6))
            GOOD = open(p, "rb").read()
    return GOOD


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 300)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.binary(min_size=1, max_size=64)),
)


def mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in muts:
        pos = pos % (len(b) + 1)
        if kind == "flip" and pos < len(b):
            b[pos] ^= arg
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        elif kind == "overwrite":
            b[pos:pos + len(arg)] = arg
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_mutated_bytes(muts):
    _exercise(mutate(good_bytes(), muts))


def split_frames(data: bytes):
    _, _, _, _, meta_len = rf.HEADER.unpack_from(data)
    off = rf.HEADER.size + meta_len + 4
    head = data[:off]
    frames = []
    while off < len(data):
        kind, codec, _, blen, _ = rf.FRAME.unpack_from(data, off)
        body = data[off + rf.FRAME_LEN:off + rf.FRAME_LEN + blen]
        jlen = struct.unpack_from("<I", body)[0]
        frames.append([kind, codec, json.loads(body[4:4 + jlen]), body[4 + jlen:]])
        off += rf.FRAME_LEN + blen
    return head, frames


def join_frames(head: bytes, frames) -> bytes:
    out = bytearray(head)
    for kind, codec, obj, blob in frames:
        out += rf._frame(kind, obj, blob, codec)
    return bytes(out)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_valid_checksums_bad_contents(data):
    """Mutations behind valid CRCs: the parser's own checks must hold."""
    head, frames = split_frames(good_bytes())
    i = data.draw(st.integers(0, len(frames) - 1))
    kind, codec, obj, blob = frames[i]
    what = data.draw(st.sampled_from(["field", "drop", "blob", "codec", "kind", "reorder", "nested"]))
    if what == "field" and obj:
        key = data.draw(st.sampled_from(sorted(obj)))
        obj[key] = data.draw(json_value)
    elif what == "drop" and obj:
        obj.pop(data.draw(st.sampled_from(sorted(obj))))
    elif what == "nested" and obj:
        key = data.draw(st.sampled_from(sorted(obj)))
        if isinstance(obj[key], list) and obj[key]:
            j = data.draw(st.integers(0, len(obj[key]) - 1))
            item = obj[key][j]
            if isinstance(item, list) and item:
                item[data.draw(st.integers(0, len(item) - 1))] = data.draw(json_value)
            else:
                obj[key][j] = data.draw(json_value)
    elif what == "blob":
        blob = data.draw(st.binary(max_size=64)) if data.draw(st.booleans()) else \
            zlib.compress(data.draw(st.binary(max_size=2000)))
    elif what == "codec":
        codec = data.draw(st.integers(0, 255))
    elif what == "kind":
        kind = data.draw(st.sampled_from([b"L", b"R", b"E", b"X"]))
    elif what == "reorder":
        j = data.draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    frames[i] = [kind, codec, obj, blob] if what != "reorder" else frames[i]
    try:
        mutated = join_frames(head, frames)
    except (ValueError, TypeError):      # json.dumps refused the value (NaN is fine, but e.g. huge ints)
        return
    _exercise(mutated)


def test_fuzz_bad_header_json(tmp_path):
    """Header metadata that parses as JSON but is wrong in every field."""
    for bad in ({}, {"granularity": "page"}, {"granularity": "x", "backend": "b"},
                {"pid": -1, "granularity": "page", "backend": "b", "page_size": 4096, "interval_s": 1,
                 "start_time": 0}, [1, 2], {"cmdline": "notalist"}):
        js = json.dumps(bad).encode()
        head = rf.HEADER.pack(rf.MAGIC, 1, 0, 0, len(js))
        blob = head + js + struct.pack("<I", zlib.crc32(head + js))
        with pytest.raises(BadInput):
            rf.Record("<x>", blob)
