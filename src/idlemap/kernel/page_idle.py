"""/sys/kernel/mm/page_idle/bitmap (CONFIG_IDLE_PAGE_TRACKING).

Frame i is bit i%64 of native-endian u64 word i/64; 1 = idle.  Writing a 1
marks the frame idle and clears the accessed bits of every PTE mapping it
(rmap walk); writing 0 does nothing.  Reading checks the accessed bits again
and reports 1 only if no mapping touched the frame since.  Only frames of
user pages on an LRU list are tracked; for a THP only the head frame carries
the flag (tail frames read 0).

Cost model (mm/page_idle.c, 6.1): the kernel visits every frame of every
word we read or write -- a frame of ours, a neighbour's, a free frame -- and
walks the rmap of every frame whose bit we set or that is idle-flagged when
read.  So we touch only words holding our frames, in as few <= 4 KiB calls
as the words' layout allows, and build the words with vectorised bit work.
"""
from __future__ import annotations

import errno
import os
import sys

import numpy as np

from ..errors import AccessDenied, FeatureMissing
from .frames import (SYSFS_IO_CAP, buffer_index, index_in_runs, pieces, pread_joined, pread_pieces,
                     pwrite_pieces, run_offsets, word_runs)

PATH = "/sys/kernel/mm/page_idle/bitmap"

# Merging two runs of words separated by up to this many unused words saves
# a syscall.  Writing an unused (zero) word costs the kernel a bit test per
# frame; reading one costs a page lookup per frame (an rmap walk if someone
# else flagged it idle): measured under TCG, a read word ~ 64 x 250 ns, a
# syscall ~25 us.  So writes merge wide gaps and reads only one-word gaps --
# a THP target's head words, 8 apart, are read one by one.
MAX_GAP_WORDS = 8
READ_GAP_WORDS = 1

# The frames' words are laid out in one dense buffer (word w at w - first)
# when that buffer has at most this many words per frame; beyond it (a few
# frames spread over a big machine) only the runs are kept and the frames
# are sorted instead.  Dense: a scatter + np.packbits, ~1/10 of a sort.
DENSE_WORDS_PER_FRAME = 1
# Reading back: unpack the buffer to one byte per frame and gather, when
# that array stays within this many bytes per frame asked for.
UNPACK_BYTES_PER_FRAME = 8

_LITTLE = sys.byteorder == "little"
_U64_63 = np.uint64(63)
_U64_6 = np.uint64(6)


def available() -> bool:
    return os.path.exists(PATH)


class FramePlan:
    """Where a set of frames lives in the bitmap file, computed once and used
    for both reading and (re)marking the same frames.

    ``words`` is the I/O buffer: the words with the frames' bits set (what a
    write sends); ``bitpos[i]`` is the bit of frame i (as given) in it.
    ``write`` and ``read`` are the (file_offsets, buffer_offsets, sizes)
    pieces of each direction: reads skip more of the unused words.
    """

    __slots__ = ("npfns", "words", "bitpos", "write", "read", "_read_index")

    def __init__(self, pfns: np.ndarray):
        self._read_index = None
        pfns = np.asarray(pfns)
        if pfns.dtype != np.uint64:
            pfns = pfns.astype(np.uint64)
        self.npfns = n = int(pfns.size)
        if n == 0:
            self.words = np.zeros(0, np.uint64)
            self.bitpos = np.zeros(0, np.intp)
            self.write = self.read = ([], [], [])
            return
        first_word = int(pfns.min()) >> 6
        nwords = (int(pfns.max()) >> 6) - first_word + 1
        if nwords <= DENSE_WORDS_PER_FRAME * n:
            # Dense: one bool per frame of the span, packed into words.
            # Duplicates are harmless, no sort is needed.
            rel = pfns.view(np.int64) - (first_word << 6)       # frames < 2**55
            flags = np.zeros(nwords * 64, np.bool_)
            flags[rel] = True
            words = np.packbits(flags, bitorder="little").view(np.uint64)
            if not _LITTLE:
                words = words.byteswap()
            used = np.flatnonzero(words)
            starts, lengths = word_runs(used, MAX_GAP_WORDS)
            buf_starts = starts
            starts = starts + first_word
            rstarts, rlengths = word_runs(used, READ_GAP_WORDS)
            read_buf_starts = rstarts
            rstarts = rstarts + first_word
            bitpos = rel
        else:
            # Sparse: sort, OR the bits of each word together (reduceat over
            # the sorted frames: duplicates OR harmlessly), keep only runs.
            s = np.sort(pfns)
            w = s >> _U64_6
            first = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
            uw = w[first].astype(np.int64)
            marks = np.bitwise_or.reduceat(np.left_shift(np.uint64(1), s & _U64_63), first)
            starts, lengths = word_runs(uw, MAX_GAP_WORDS)
            buf_starts = run_offsets(lengths)
            words = np.zeros(int(lengths.sum()), np.uint64)
            words[buffer_index(uw, starts, lengths)] = marks
            pos = buffer_index((pfns >> _U64_6).astype(np.int64), starts, lengths)
            bitpos = (pos << 6) + (pfns & _U64_63).astype(np.int64)
            rstarts, rlengths = word_runs(uw, READ_GAP_WORDS)
            read_buf_starts = buffer_index(rstarts, starts, lengths)
        self.words = words
        self.bitpos = bitpos
        self.write = pieces(starts, lengths, buf_starts, cap=SYSFS_IO_CAP)
        self.read = pieces(rstarts, rlengths, read_buf_starts, cap=SYSFS_IO_CAP)

    @property
    def nsyscalls(self) -> int:
        """Syscalls of one write plus one read (without short transfers)."""
        return len(self.write[2]) + len(self.read[2])

    @property
    def read_index(self) -> np.ndarray:
        """Position in ``words`` of each word the read pieces bring, in
        order (the pieces' data concatenated lands at these positions)."""
        if self._read_index is None:
            bo = np.asarray(self.read[1], np.int64) >> 3
            ln = np.asarray(self.read[2], np.int64) >> 3
            self._read_index = np.repeat(bo, ln) + index_in_runs(ln)
        return self._read_index

    def extract(self, buf: np.ndarray) -> np.ndarray:
        """Bit of each planned frame in a buffer laid out like ``words``."""
        if buf.size * 64 <= UNPACK_BYTES_PER_FRAME * max(self.npfns, 1):
            le = buf if _LITTLE else buf.byteswap()     # bit i of a word = bit i%8 of byte i/8
            return np.unpackbits(le.view(np.uint8), bitorder="little")[self.bitpos].view(np.bool_)
        bp = self.bitpos
        return ((buf[bp >> 6] >> (bp & 63).astype(np.uint64)) & np.uint64(1)).astype(np.bool_)


class PageIdleBitmap:
    def __init__(self, path: str = PATH):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FeatureMissing("page_idle bitmap", "CONFIG_IDLE_PAGE_TRACKING",
                                 "use --backend clear_refs for totals per mapping") from None
        except PermissionError:
            raise AccessDenied(path, "page idle tracking needs root") from None
        self.syscalls = 0
        self._rbuf = np.zeros(0, np.uint64)
        self._read_of: FramePlan | None = None     # the plan whose words _rbuf holds

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PageIdleBitmap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def plan(pfns: np.ndarray) -> FramePlan:
        return FramePlan(pfns)

    def set_plan(self, plan: FramePlan) -> int:
        """Mark the planned frames idle.  Returns how many were asked for."""
        if not plan.npfns:
            return 0
        self._write(plan.words, plan.write)
        return plan.npfns

    def remark_plan(self, plan: FramePlan) -> bool:
        """Right after ``read_plan(plan)``: mark idle again the planned frames
        that did not read idle, and only those.  False if the last read was
        not of this plan: then every planned frame was marked.

        Why skipping the others is exact: a frame reads idle only if its
        idle flag is still set and the read's own rmap walk found no
        accessed bit (the walk clears what it finds, and clears the flag of
        a frame it found accessed).  Marking it again would walk the same
        rmap to clear nothing and set a flag already set, so its state is
        already that of a freshly marked frame -- and an access in the
        instant between the read and the write is kept for the next window
        instead of being wiped.  In a steady run of windows this saves the
        mark's rmap walk for every idle frame: the write costs the accessed
        frames only."""
        if not plan.npfns:
            return True
        if self._read_of is not plan:       # not what the buffer holds: mark them all
            self.set_plan(plan)
            return False
        self._read_of = None
        n = plan.words.size
        words = np.bitwise_and(plan.words, np.invert(self._rbuf[:n]))
        foff, boff, size = plan.write
        # Pieces left all zero are skipped (a zero word costs the kernel 64
        # bit tests, a piece a syscall).  Bytes between pieces are unused
        # words, zero in plan.words, so summing across them adds nothing.
        nz = np.add.reduceat(words != 0, np.asarray(boff, np.intp) >> 3)
        keep = np.flatnonzero(nz)
        if keep.size < len(size):
            foff, boff, size = ([foff[i] for i in keep], [boff[i] for i in keep],
                                [size[i] for i in keep])
        if size:
            self._write(words, (foff, boff, size))
        return True

    def _write(self, words: np.ndarray, write) -> None:
        try:
            self.syscalls += pwrite_pieces(self.fd, words, *write)
        except OSError as e:
            if e.errno == errno.ENXIO:   # a frame past max_pfn: memory hot-removed?
                return
            raise

    def read_plan(self, plan: FramePlan) -> np.ndarray:
        """Idle bit (bool) of each planned frame, in the order planned."""
        if not plan.npfns:
            return np.zeros(0, dtype=bool)
        n = plan.words.size
        if self._rbuf.size < n:
            self._rbuf = np.zeros(n, np.uint64)     # reused between rounds
        buf = self._rbuf[:n]
        self._read_of = plan
        buf.fill(0)                                 # words past max_pfn read as 0
        data = pread_joined(self.fd, plan.read[0], plan.read[2])
        if data is not None:
            self.syscalls += len(plan.read[2])
            buf[plan.read_index] = np.frombuffer(data, np.uint64)
        else:       # a short read (max_pfn): again, piece by piece (buf is still all zero)
            self.syscalls += pread_pieces(self.fd, buf, *plan.read)
        return plan.extract(buf)

    def set_idle(self, pfns: np.ndarray) -> None:
        """Mark the given frames idle (they need not be sorted or unique)."""
        self.set_plan(FramePlan(pfns))
