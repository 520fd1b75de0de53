"""The page_idle I/O plan: which bitmap words to move, in <= 4 KiB pieces,
and where each frame's bit sits -- pure numpy, checked against a naive model."""
import os

import numpy as np
import pytest

from idlemap.kernel.frames import SYSFS_IO_CAP, pieces, pread_pieces, pwrite_pieces
from idlemap.kernel.page_idle import FramePlan


def covered_frames(plan: FramePlan) -> set[int]:
    """Frames whose bit the plan's write buffer sets, in file coordinates."""
    out = set()
    bits = np.unpackbits(plan.words.view(np.uint8), bitorder="little")
    for fo, bo, n in zip(*plan.write):
        seg = bits[bo * 8:(bo + n) * 8]
        out.update((fo * 8 + np.flatnonzero(seg)).tolist())
    return out


@pytest.mark.parametrize("layout", ["dense", "sparse", "duplicates", "one"])
def test_plan_sets_exactly_the_frames_and_finds_their_bits(layout):
    rng = np.random.default_rng(7)
    if layout == "dense":        # a big target: frames cover most words of a range
        pfns = rng.permutation(np.arange(10_000, 400_000))[:300_000]
    elif layout == "sparse":     # a few frames over a big machine
        pfns = rng.choice(1 << 34, 5_000, replace=False)
    elif layout == "duplicates":
        pfns = np.repeat(rng.integers(0, 1 << 20, 1000), 3)
    else:
        pfns = np.array([123456789])
    pfns = pfns.astype(np.uint64)
    plan = FramePlan(pfns)
    assert covered_frames(plan) == set(np.unique(pfns).tolist())
    # pieces: at most the sysfs cap, 8-byte aligned, ascending, disjoint in the file
    for file_offs, buf_offs, sizes in (plan.write, plan.read):
        assert all(0 < n <= SYSFS_IO_CAP and n % 8 == 0 for n in sizes)
        assert all(fo % 8 == 0 and bo % 8 == 0 for fo, bo in zip(file_offs, buf_offs))
        ends = [fo + n for fo, n in zip(file_offs, sizes)]
        assert all(b >= a for a, b in zip(ends, file_offs[1:]))
        assert all(bo + n <= plan.words.nbytes for bo, n in zip(buf_offs, sizes))
    # reading back through the read pieces from a "bitmap file" where a
    # random half of the frames are idle: each frame gets its own bit, in
    # the order given
    keep = rng.random(pfns.size) < 0.5
    want = {int(p) for p, k in zip(pfns, keep) if k}
    file_words: dict[int, int] = {}
    for p in want:
        file_words[p >> 6] = file_words.get(p >> 6, 0) | (1 << (p & 63))
    buf = np.zeros_like(plan.words)
    for fo, bo, n in zip(*plan.read):
        for j in range(n // 8):
            buf[bo // 8 + j] = file_words.get(fo // 8 + j, 0)
    got = plan.extract(buf)
    assert got.dtype == bool and got.shape == pfns.shape
    assert np.array_equal(got, np.array([int(p) in want for p in pfns]))
    assert plan.extract(plan.words).all()


def test_empty_plan():
    plan = FramePlan(np.zeros(0, np.uint64))
    assert plan.npfns == 0 and plan.nsyscalls == 0


def test_reads_skip_gaps_writes_merge():
    """THP heads 8 words apart: one write piece, one read piece per head."""
    heads = (np.arange(64, dtype=np.uint64) * 512) + np.uint64(1 << 20)
    plan = FramePlan(heads)
    assert len(plan.write[2]) == 1
    assert len(plan.read[2]) == 64 and set(plan.read[2]) == {8}


def test_pieces_split_runs_at_the_cap():
    fo, bo, n = pieces(np.array([0, 10_000]), np.array([1000, 3]), np.array([0, 1000]), cap=4096)
    assert n == [4096, 3904, 24]
    assert fo == [0, 4096, 80_000]
    assert bo == [0, 4096, 8000]


def test_piece_io_on_a_real_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(64 * 1024))
    fd = os.open(path, os.O_RDWR)
    try:
        data = np.arange(2048, dtype=np.uint64)
        plan = pieces(np.array([100, 5000]), np.array([1024, 1024]), np.array([0, 1024]), cap=4096)
        assert pwrite_pieces(fd, data, *plan) == 4
        back = np.frombuffer(os.pread(fd, 8 * 1024, 800), np.uint64)
        assert np.array_equal(back, data[:1024])
        # reading past the end of the file stops there and leaves zeros
        os.pwrite(fd, np.ones(192, np.uint64).tobytes(), 8000 * 8)       # the file's last 192 words
        out = np.zeros(2048 + 512, np.uint64)
        tail = pieces(np.array([100, 8000]), np.array([1024, 1536]), np.array([0, 1024]), cap=4096)
        pread_pieces(fd, out, *tail)
        assert np.array_equal(out[:1024], data[:1024])
        assert (out[1024:1024 + 192] == 1).all()          # the file ends at word 8192

        assert not out[1024 + 192:].any()
    finally:
        os.close(fd)


def test_remark_writes_only_frames_that_did_not_read_idle(tmp_path):
    """After read_plan, remark_plan sends the plan's words minus the bits
    that read 1 (idle), and no syscall for a piece left all zero.  On a
    plain file standing in for the bitmap, only to see what is written."""
    from idlemap.kernel.page_idle import PageIdleBitmap
    rng = np.random.default_rng(3)
    # two far-apart groups: two write pieces
    pfns = np.concatenate((np.arange(64, 64 + 2000), np.arange(1 << 16, (1 << 16) + 2000))).astype(np.uint64)
    path = tmp_path / "bitmap"
    path.write_bytes(bytes(8 * ((1 << 16) // 64 + 64)))
    plan = FramePlan(pfns)
    idle = rng.random(pfns.size) < 0.5
    idle[2000:] = True                       # the second group all idle
    before = np.zeros(path.stat().st_size // 8, np.uint64)
    for p in pfns[idle]:
        before[int(p) >> 6] |= np.uint64(1) << np.uint64(int(p) & 63)
    path.write_bytes(before.tobytes())
    with PageIdleBitmap(str(path)) as bm:
        got = bm.read_plan(plan)
        assert np.array_equal(got, idle)
        calls = bm.syscalls
        assert bm.remark_plan(plan)
        wrote = bm.syscalls - calls
    after = np.frombuffer(path.read_bytes(), np.uint64)
    # the first group's words now hold exactly its frames that read 0
    want = np.zeros_like(before)
    for p in pfns[~idle]:
        want[int(p) >> 6] |= np.uint64(1) << np.uint64(int(p) & 63)
    assert np.array_equal(after[:64], want[:64])
    # the all-idle group's piece was not written: its words are unchanged
    assert np.array_equal(after[1024:], before[1024:])
    assert wrote == 1


def test_remark_without_the_read_marks_everything(tmp_path):
    from idlemap.kernel.page_idle import PageIdleBitmap
    path = tmp_path / "bitmap"
    path.write_bytes(bytes(8 * 64))
    pfns = np.arange(100, 300, dtype=np.uint64)
    plan = FramePlan(pfns)
    with PageIdleBitmap(str(path)) as bm:
        assert not bm.remark_plan(plan)
    words = np.frombuffer(path.read_bytes(), np.uint64)
    assert np.array_equal(words[1:5], plan.words)       # frames 100..299: words 1..4
    assert not words[5:].any() and not words[0]
