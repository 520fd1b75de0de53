"""Run-coalesced I/O on files indexed by page frame number.

/sys/kernel/mm/page_idle/bitmap (one bit per frame, u64 words) and
/proc/kpageflags (one u64 per frame) are both read at scattered frames.  We
sort the frames, turn them into runs of consecutive words, merge runs whose
gap is small (one bigger syscall beats two), and move at most ``cap`` bytes
per call because the page_idle file is a sysfs binary attribute whose
read()/write() handle at most PAGE_SIZE (4096) bytes each; a larger pwrite
silently writes only the first 4 KiB (tested in the VM; docs/design.md).

The runs are cut into capped pieces with numpy up front, so the only Python
loop left on the hot path is one iteration per syscall.
"""
from __future__ import annotations

import os

import numpy as np

SYSFS_IO_CAP = 4096


def word_runs(words: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique word indices -> (run_starts, run_lengths), merging runs
    separated by fewer than ``max_gap`` unused words."""
    if words.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    words = words.astype(np.int64, copy=False)
    breaks = np.flatnonzero(np.diff(words) > max_gap + 1) + 1
    starts = words[np.concatenate(([0], breaks))]
    ends = words[np.concatenate((breaks - 1, [words.size - 1]))] + 1
    return starts, ends - starts


def run_offsets(lengths) -> np.ndarray:
    """Where each run starts in the concatenation of runs of these lengths."""
    lengths = np.asarray(lengths, np.int64)
    return np.cumsum(lengths) - lengths


def index_in_runs(lengths) -> np.ndarray:
    """0, 1, ..., n - 1 for each run of length n, concatenated."""
    lengths = np.asarray(lengths, np.int64)
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(run_offsets(lengths), lengths)


def buffer_index(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Position of each word (any order) inside the concatenation of the runs."""
    run_of = np.searchsorted(starts, words, side="right") - 1
    return run_offsets(lengths)[run_of] + (words - starts[run_of])


def pieces(starts: np.ndarray, lengths: np.ndarray, buf_starts: np.ndarray, item: int = 8,
           cap: int | None = None) -> tuple[list[int], list[int], list[int]]:
    """Runs of records -> (file_offsets, buffer_offsets, sizes) in bytes, each
    piece at most ``cap`` bytes, in the order of the runs."""
    starts = np.asarray(starts, np.int64)
    nbytes = np.asarray(lengths, np.int64) * item
    boff = np.asarray(buf_starts, np.int64) * item
    foff = starts * item
    if cap is None or not nbytes.size or int(nbytes.max()) <= cap:
        return foff.tolist(), boff.tolist(), nbytes.tolist()
    k = (nbytes + cap - 1) // cap                 # pieces per run
    run = np.repeat(np.arange(k.size), k)
    step = index_in_runs(k) * cap
    size = np.minimum(cap, nbytes[run] - step)
    return (foff[run] + step).tolist(), (boff[run] + step).tolist(), size.tolist()


def pread_pieces(fd: int, buf: np.ndarray, file_offs: list[int], buf_offs: list[int],
                 sizes: list[int]) -> int:
    """Fill ``buf`` (zeroed by the caller) from the pieces; stop at end of
    file (the kernel returns 0 bytes past the last frame).  -> syscalls."""
    view = memoryview(buf).cast("B")
    preadv = os.preadv
    calls = 0
    for fo, bo, n in zip(file_offs, buf_offs, sizes):
        got = preadv(fd, [view[bo:bo + n]], fo)
        calls += 1
        while 0 < got < n:              # short read: only at the last frame
            more = preadv(fd, [view[bo + got:bo + n]], fo + got)
            calls += 1
            if more <= 0:
                return calls
            got += more
        if got <= 0:
            return calls
    return calls


def pread_joined(fd: int, file_offs: list[int], sizes: list[int]) -> bytes | None:
    """The pieces read one pread each and concatenated; None if any came
    back short (end of file), for the caller to fall back on pread_pieces.
    The cheapest loop per syscall Python has: under TCG the per-piece
    Python work of pread_pieces costs about as much as the syscall."""
    pread = os.pread
    data = b"".join([pread(fd, n, fo) for fo, n in zip(file_offs, sizes)])
    return data if len(data) == sum(sizes) else None


def pwrite_pieces(fd: int, buf: np.ndarray, file_offs: list[int], buf_offs: list[int],
                  sizes: list[int]) -> int:
    """Write the pieces of ``buf``; OSError (e.g. ENXIO past the last frame)
    propagates.  -> syscalls."""
    view = memoryview(buf).cast("B")
    pwritev = os.pwritev
    calls = 0
    for fo, bo, n in zip(file_offs, buf_offs, sizes):
        done = pwritev(fd, [view[bo:bo + n]], fo)
        calls += 1
        while done < n:                 # short write: the kernel stopped at max_pfn
            done += pwritev(fd, [view[bo + done:bo + n]], fo + done)
            calls += 1
    return calls


def pread_runs(fd: int, starts: np.ndarray, lengths: np.ndarray, item: int = 8,
               cap: int | None = None) -> np.ndarray:
    """Read runs of ``item``-byte records into one uint64 array (zero past EOF)."""
    buf = np.zeros(int(np.sum(lengths)) * item // 8, dtype=np.uint64)
    pread_pieces(fd, buf, *pieces(starts, lengths, run_offsets(lengths), item, cap))
    return buf


def pwrite_runs(fd: int, starts: np.ndarray, lengths: np.ndarray, buf: np.ndarray,
                item: int = 8, cap: int | None = None) -> None:
    pwrite_pieces(fd, buf, *pieces(starts, lengths, run_offsets(lengths), item, cap))


def read_per_frame(path: str, pfns) -> np.ndarray:
    """One u64 per frame from a /proc/kpage* file (kpagecount, kpagecgroup),
    for frames given in any order, as int64 in that order.  Each frame is
    read once, in the fewest preads (runs of nearby frames).  OSErrors go
    to the caller, who knows what a missing or denied file means."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    if pfns.size == 0:
        return np.zeros(0, np.int64)
    u = np.unique(pfns)                     # sorted, as uint64: no sign wrap
    inverse = np.searchsorted(u, pfns)
    u = u.astype(np.int64)
    starts, lengths = word_runs(u, 64)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = pread_runs(fd, starts, lengths)
    finally:
        os.close(fd)
    return buf[buffer_index(u, starts, lengths)][inverse].astype(np.int64)
