"""Run-coalesced I/O on files indexed by page frame number.

/sys/kernel/mm/page_idle/bitmap (one bit per frame, u64 words) and
/proc/kpageflags (one u64 per frame) are both read at scattered frames.  We
sort the frames, turn them into runs of consecutive words, merge runs whose
gap is small (one bigger syscall beats two), and move at most ``cap`` bytes
per call because the page_idle file is a sysfs binary attribute whose
read()/write() handle at most PAGE_SIZE (4096) bytes each; a larger pwrite
silently writes only the first 4 KiB (KERNEL.md, measured).
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
    breaks = np.nonzero(np.diff(words) > max_gap + 1)[0] + 1
    starts = words[np.concatenate(([0], breaks))]
    ends = words[np.concatenate((breaks - 1, [words.size - 1]))] + 1
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def buffer_index(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Position of each word (sorted) inside the concatenation of the runs."""
    run_of = np.searchsorted(starts, words, side="right") - 1
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return offsets[run_of] + (words - starts[run_of])


def pread_runs(fd: int, starts: np.ndarray, lengths: np.ndarray, item: int = 8,
               cap: int | None = None) -> np.ndarray:
    """Read runs of ``item``-byte records into one uint64 array (zero past EOF)."""
    buf = np.zeros(int(lengths.sum()), dtype=np.uint64)
    view = memoryview(buf).cast("B")
    pos = 0
    for s, n in zip(starts.tolist(), lengths.tolist()):
        want = n * item
        done = 0
        while done < want:
            step = want - done if cap is None else min(cap, want - done)
            got = os.preadv(fd, [view[pos + done:pos + done + step]], s * item + done)
            if got <= 0:
                break       # past the last frame: the kernel returns 0 bytes
            done += got
        pos += want
    return buf


def pwrite_runs(fd: int, starts: np.ndarray, lengths: np.ndarray, buf: np.ndarray,
                item: int = 8, cap: int | None = None) -> None:
    view = memoryview(buf).cast("B")
    pos = 0
    for s, n in zip(starts.tolist(), lengths.tolist()):
        want = n * item
        done = 0
        while done < want:
            step = want - done if cap is None else min(cap, want - done)
            done += os.pwritev(fd, [view[pos + done:pos + done + step]], s * item + done)
        pos += want
