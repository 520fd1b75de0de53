"""The files of ``idlemap mount DIR/<pid>/``, independent of FUSE.

Each class here is one open file: ``read(off, size) -> bytes`` and (for
idle_bitmap) ``write(off, data) -> int``, raising :class:`FileOpError`
(an errno) or idlemap errors; ``errno_of`` turns those into the errno the
caller's syscall returns.  ``services.fuse`` only routes requests here.

Semantics follow the RFC's /proc/PID/idle_bitmap (docs/idle_pages.md and
docs/fuse.md): u64 words, 64 pages per word, byte offset b covers virtual
pages from b*8; offsets and sizes must be multiples of 8 (EINVAL); the file
ends at the top of the user address space (reads there return 0 bytes).
Only the parts of a request that overlap mappings cost anything: the rest
is filled with a constant (holes read idle, not present).
"""
from __future__ import annotations

import errno
import os
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..formats import idle_pages as ip
from ..analysis.spans import merge_ranges
from ..bitmap import HPAGE_PAGES, IdleBitmap
from ..errors import AccessDenied, FeatureMissing, NoSuchProcess, PidReused, TargetExited, proc_errors
from ..kernel import pagemap as pm
from ..kernel import smaps
from ..kernel.maps import PAGE_SHIFT, PAGE_SIZE, read_raw, tracked_bounds
from ..kernel.process import ProcessId, check_same
from ..kernel.tasks import parse_stat

# Top of the user address space on x86-64 with 4-level page tables
# (arch/x86/include/asm/page_64_types.h: TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE).
# Kernels with 5-level paging hand out addresses above it only to
# processes that ask with an mmap hint; the RFC's file stopped here too.
TASK_SIZE = (1 << 47) - PAGE_SIZE
WORD_PAGES = 64
WORD_VA = WORD_PAGES << PAGE_SHIFT                 # 256 KiB of address space per u64
BITMAP_FILE_BYTES = -(-(TASK_SIZE >> PAGE_SHIFT) // WORD_PAGES) * 8     # 4 GiB
HPAGE_VA = HPAGE_PAGES << PAGE_SHIFT
ALL_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


class FileOpError(Exception):
    """An operation on a mount file failed with ``errno``; the message is for the log."""

    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.errno = err


def errno_of(exc: BaseException) -> int:
    """The errno a caller's syscall gets for an exception from this module."""
    if isinstance(exc, FileOpError):
        return exc.errno
    if isinstance(exc, NoSuchProcess):          # includes TargetExited, PidReused
        return errno.ESRCH
    if isinstance(exc, AccessDenied):
        return errno.EACCES
    if isinstance(exc, FeatureMissing):
        return errno.EOPNOTSUPP
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


# -- address arithmetic (pure) ---------------------------------------------
def check_aligned(off: int, size: int) -> None:
    if off % 8 or size % 8:
        raise FileOpError(errno.EINVAL, f"offset {off} and size {size} must be multiples of 8 (one u64 word)")


def va_range(off: int, size: int) -> tuple[int, int]:
    """Byte range of a bitmap file -> the VA range it covers."""
    return (off * 8) << PAGE_SHIFT, ((off + size) * 8) << PAGE_SHIFT


def clip(pieces, lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in pieces if a < hi and b > lo]


def word_cover(pieces, lo: int, hi: int) -> list[tuple[int, int]]:
    """VA pieces (sorted) -> merged ranges widened to whole u64 words and
    clipped to [lo, hi) (lo, hi themselves word aligned)."""
    return merge_ranges((max(lo, a // WORD_VA * WORD_VA), min(hi, -(-b // WORD_VA) * WORD_VA))
                        for a, b in clip(pieces, lo, hi))


def widen_huge(lo: int, hi: int) -> tuple[int, int]:
    """Widen to 2 MiB boundaries so a transparent huge page cut by the
    request is still recognised whole (its idle flag lives on the head)."""
    return lo // HPAGE_VA * HPAGE_VA, -(-hi // HPAGE_VA) * HPAGE_VA


# /proc/PID/maps -> sorted (start, end) of the mappings whose pages can be
# tracked: a cheap first look that tells whether a request touches any
# mapping at all.
parse_mapped = tracked_bounds


def read_mapped(pid: int) -> list[tuple[int, int]]:
    return tracked_bounds(read_raw(pid))


class MappedCache:
    """The mapped ranges of one process, re-read unless a request continues
    the previous one (same open file, next offset) within ``max_age_s``.

    Reading /proc/PID/maps costs ~0.5 ms for a process with a few hundred
    mappings, while a tool that reads the whole 4 GiB bitmap sends 4096
    requests of 1 MiB, nearly all over unmapped space; the kernel splits one
    big pread into such requests, so within a pass the list is reused (the
    answer is then as of the pass's first request, as if read at once).
    """

    def __init__(self, pid: int, max_age_s: float = 0.05):
        self.pid = pid
        self.max_age_s = max_age_s
        self.ranges: list[tuple[int, int]] = []
        self.next_off = -1
        self.taken = 0.0

    def get(self, off: int, size: int) -> list[tuple[int, int]]:
        now = time.monotonic()
        if off != self.next_off or now - self.taken > self.max_age_s:
            self.ranges = read_mapped(self.pid)
            self.taken = now
        self.next_off = off + size
        return self.ranges

    def invalidate(self) -> None:
        self.next_off = -1


# -- binding an open file to the process image it was checked against -------
# Fields of /proc/PID/stat that describe the mm (start_code, end_code,
# start_stack, start_data, end_data, start_brk, arg_start, arg_end,
# env_start, env_end): set by exec for the new image, never changed by the
# process afterwards without CAP_SYS_RESOURCE (prctl PR_SET_MM).  Field 22
# (starttime) tells PID reuse; it does not change on exec.
_MM_FIELDS = (26, 27, 28, 45, 46, 47, 48, 49, 50, 51)


def image_key(pid: int, start_ticks: int) -> tuple:
    """What identifies the process image (mm) of PID now: the mm fields of
    its stat and the (device, inode) of its executable.  Raises
    TargetExited / PidReused when PID is no longer the process that
    started at ``start_ticks``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            _, rest = parse_stat(f.read().decode("utf-8", "replace"))
        exe = os.stat(f"/proc/{pid}/exe")
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExited(pid) from None
    if int(rest[19]) != start_ticks:
        raise PidReused(pid)
    if rest[0] in ("Z", "X"):
        raise TargetExited(pid)
    return tuple(int(rest[n - 3]) for n in _MM_FIELDS) + (exe.st_dev, exe.st_ino)


class ImageBinding:
    """Ties an open mount file to the process image it was checked against,
    as /proc ties /proc/PID/pagemap to the mm it checked at open.

    At creation (before the access decision) it keeps an open descriptor of
    /proc/PID/pagemap -- the kernel binds that descriptor to the mm of the
    moment, and once that mm is gone (an exec replaced it) reads through it
    return 0 bytes -- and the image key above.  ``check()`` runs before and
    after every request: the image must be the one bound at open (key
    unchanged, which also catches an exec whose old mm lives on in a
    CLONE_VM sibling) and that mm still alive.  Otherwise EACCES: the
    descriptor no longer answers and a fresh open is checked afresh
    (/proc's own pagemap and mem descriptors read 0 bytes then; an error is
    clearer than an end of file in the middle of a 4 GiB bitmap, and a
    write returning 0 would spin a write loop).
    """

    EXEC_WAIT_S = 0.1

    def __init__(self, proc: ProcessId):
        self.proc = proc
        self.key = image_key(proc.pid, proc.start_ticks)
        with proc_errors(proc.pid, "pagemap"):
            self.fd = os.open(f"/proc/{proc.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        # start_code 0: caught inside an exec, after the switch to the new mm
        # (so the descriptor above is bound to it) but before the loader set
        # the image up.  Wait for the image to be complete, briefly; if it
        # never is, every request fails closed (EACCES).
        deadline = time.monotonic() + self.EXEC_WAIT_S
        if self.key[0] == 0:
            while self.key[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
                self.key = image_key(proc.pid, proc.start_ticks)
            time.sleep(0.001)        # the loader sets start_brk just after start_code
            self.key = image_key(proc.pid, proc.start_ticks)

    def check(self) -> None:
        try:
            alive = len(os.pread(self.fd, 8, 0)) == 8
        except OSError:
            alive = False
        # Exit and PID reuse first: they keep their ESRCH.
        key = image_key(self.proc.pid, self.proc.start_ticks)
        if key != self.key or not alive:
            raise FileOpError(errno.EACCES, f"process {self.proc.pid} has executed a new program "
                                            "since this file was opened; open it again")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_FILL: dict[int, bytes] = {}


def fill_bytes(byte: int, size: int) -> memoryview:
    """``size`` bytes of ``byte`` without allocating per request (FUSE
    replies straight from the buffer)."""
    buf = _FILL.get(byte)
    if buf is None or len(buf) < size:
        buf = _FILL[byte] = bytes([byte]) * max(size, 1 << 20)
    return memoryview(buf)[:size]


def bits_of(words: np.ndarray) -> np.ndarray:
    """u64 words (RFC layout) -> one bool per page."""
    return np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)


@dataclass
class MarkLog:
    """When each process was last marked through the mount (for ``wss``)."""
    marks: dict[int, tuple[int, float]]

    def record(self, proc: ProcessId) -> None:
        self.marks[proc.pid] = (proc.start_ticks, time.monotonic())

    def window_s(self, proc: ProcessId) -> float | None:
        got = self.marks.get(proc.pid)
        if got is None or got[0] != proc.start_ticks:
            return None
        return time.monotonic() - got[1]


# -- the files ---------------------------------------------------------------
class BitmapFile:
    """``idle_bitmap`` (``kind="idle"``: read 1 = idle, write 1 = mark idle)
    or ``present_bitmap`` (``kind="present"``: read-only, 1 = present)."""

    def __init__(self, proc: ProcessId, kind: str, bitmap: IdleBitmap | None = None,
                 marks: MarkLog | None = None):
        if kind not in ("idle", "present"):
            raise ValueError(kind)
        self.proc = proc
        self.kind = kind
        self.bitmap = bitmap
        self.marks = marks
        self._pagemap = pm.Pagemap(proc.pid) if kind == "present" else None
        self._mapped = MappedCache(proc.pid)

    def close(self) -> None:
        if self.bitmap is not None:
            self.bitmap.close()
        if self._pagemap is not None:
            self._pagemap.close()

    def read(self, off: int, size: int) -> bytes | memoryview:
        check_aligned(off, size)
        if off >= BITMAP_FILE_BYTES or size == 0:
            return b""
        size = min(size, BITMAP_FILE_BYTES - off)
        check_same(self.proc)
        lo, hi = va_range(off, size)
        mapped = self._mapped.get(off, size)
        cover = word_cover(mapped, lo, hi)
        if not cover:
            return fill_bytes(0xFF if self.kind == "idle" else 0, size)
        out = np.full(size // 8, ALL_ONES if self.kind == "idle" else np.uint64(0), dtype=np.uint64)
        if self.kind == "idle":
            assert self.bitmap is not None
            m = self.bitmap.read([widen_huge(a, b) for a, b in cover])
            for a, b in cover:
                idle, _ = m.rfc_words(a, b)
                out[(a - lo) // WORD_VA:(b - lo) // WORD_VA] = idle
        else:
            for a, b in cover:
                out[(a - lo) // WORD_VA:(b - lo) // WORD_VA] = self._present_words(mapped, a, b)
        return out.tobytes()

    def _present_words(self, mapped, a: int, b: int) -> np.ndarray:
        assert self._pagemap is not None
        present = np.zeros((b - a) >> PAGE_SHIFT, dtype=bool)
        for x, y in clip(mapped, a, b):
            e = self._pagemap.read(x >> PAGE_SHIFT, (y - x) >> PAGE_SHIFT)
            present[(x - a) >> PAGE_SHIFT:(y - a) >> PAGE_SHIFT] = (e & pm.PRESENT) != 0
        return np.packbits(present, bitorder="little").view(np.uint64)

    def write(self, off: int, data: bytes) -> int:
        if self.kind != "idle":
            raise FileOpError(errno.EBADF, "present_bitmap is read-only")
        check_aligned(off, len(data))
        if not data:
            return 0
        if off >= BITMAP_FILE_BYTES:
            # page_idle's bitmap says ENXIO for a write past its last frame.
            raise FileOpError(errno.ENXIO, f"offset {off} is past the top of the address space")
        n = min(len(data), BITMAP_FILE_BYTES - off)
        words = np.frombuffer(data, dtype=np.uint64, count=n // 8)
        nz = np.flatnonzero(words)
        if nz.size == 0:
            return n                        # 0 bits are ignored
        check_same(self.proc)
        self._mapped.invalidate()
        lo, _ = va_range(off, n)
        first = lo + int(nz[0]) * WORD_VA
        last = lo + (int(nz[-1]) + 1) * WORD_VA
        cover = word_cover(read_mapped(self.proc.pid), first, last)
        if cover:
            assert self.bitmap is not None
            self.bitmap.mark_idle_mask(lo, bits_of(words), [widen_huge(a, b) for a, b in cover])
        if self.marks is not None:
            self.marks.record(self.proc)
        return n


class IdlePagesFile:
    """``idle_pages``: the run-length stream (see idlemap.formats.idle_pages).

    The file offset of a fresh scan is a virtual address: ``pread(fd, buf,
    n, VA)`` starts reporting at the first mapped page at or above VA (0:
    from the lowest mapping), and ``read()`` simply goes on (the kernel
    advances the offset by the bytes returned, and a read at exactly that
    offset continues the scan).  Every read's data starts with SET_VA, so
    each buffer decodes on its own.  The process is scanned 1 GiB of
    mapped memory at a time, as reads ask for more.
    """

    CHUNK_PAGES = 1 << 18            # 1 GiB of mapped memory per page_idle pass
    MIN_READ = ip.SET_VA_BYTES + 1

    def __init__(self, proc: ProcessId, bitmap: IdleBitmap):
        self.proc = proc
        self.bitmap = bitmap
        self.next_off: int | None = None
        self.pending: deque[list] = deque()       # [Encoded, next byte index]
        self.scan_va = 0
        self.done = True

    def close(self) -> None:
        self.bitmap.close()

    def _restart(self, va: int) -> None:
        self.pending.clear()
        self.scan_va = va
        self.done = va >= TASK_SIZE

    def _fill(self) -> None:
        """Scan the next CHUNK_PAGES of mapped memory into ``pending``."""
        pieces = [(max(a, self.scan_va), b) for a, b in read_mapped(self.proc.pid) if b > self.scan_va]
        pieces = clip(pieces, 0, TASK_SIZE)
        ranges: list[tuple[int, int]] = []
        total = 0
        for a, b in pieces:
            room = self.CHUNK_PAGES - total
            if room <= 0:
                break
            if (b - a) >> PAGE_SHIFT > room:
                # Cut on a 2 MiB boundary: a huge page is never split between passes.
                b = min(b, -(-(a + (room << PAGE_SHIFT)) // HPAGE_VA) * HPAGE_VA)
            ranges.append((a, b))
            total += (b - a) >> PAGE_SHIFT
        if not ranges:
            self.done = True
            return
        self.scan_va = ranges[-1][1]
        # Widen the first range down to 2 MiB so a THP cut by the scan's
        # start is still recognised (its tails share the head's answer);
        # pages before the start are dropped when encoding.
        fill_from = ranges[0][0]
        m = self.bitmap.read([widen_huge(*ranges[0])[:1] + (ranges[0][1],), *ranges[1:]])
        for s in m.spans:
            start = max(s.start, fill_from)
            if start >= s.end:
                continue
            i0 = s.offset + ((start - s.start) >> PAGE_SHIFT)
            i1 = s.offset + s.npages
            enc = ip.encode_span(start, m.present[i0:i1], m.idle[i0:i1], m.huge[i0:i1])
            if enc.codes.size:
                self.pending.append([enc, 0])

    def read(self, off: int, size: int) -> bytes:
        if size < self.MIN_READ:
            raise FileOpError(errno.EINVAL, f"idle_pages reads need at least {self.MIN_READ} bytes")
        if off == 0 or off != self.next_off:
            if off % PAGE_SIZE:
                raise FileOpError(errno.EINVAL, f"a new idle_pages scan must start at a page-aligned "
                                                f"address, not {off:#x}")
            self._restart(off)
        check_same(self.proc)
        out = bytearray()
        out_va: int | None = None
        while True:
            if not self.pending:
                if self.done:
                    break
                self._fill()
                continue
            enc, pos = self.pending[0]
            va = enc.start_va if pos == 0 else int(enc.ends[pos - 1])
            need = 0 if out_va == va else ip.SET_VA_BYTES
            room = size - len(out) - need
            if room <= 0:
                break
            take = min(room, enc.codes.size - pos)
            if need:
                out += ip.set_va(va)
            out += enc.codes[pos:pos + take].tobytes()
            pos += take
            out_va = int(enc.ends[pos - 1])
            if pos == enc.codes.size:
                self.pending.popleft()
            else:
                self.pending[0][1] = pos
        self.next_off = off + len(out)
        return bytes(out)


class WssFile:
    """``wss``: one line, key=value, generated when read from offset 0."""

    def __init__(self, proc: ProcessId, bitmap: IdleBitmap | None, marks: MarkLog, backend: str):
        self.proc = proc
        self.bitmap = bitmap
        self.marks = marks
        self.backend = backend
        self.text = b""

    def close(self) -> None:
        if self.bitmap is not None:
            self.bitmap.close()

    def read(self, off: int, size: int) -> bytes:
        if off == 0:
            self.text = wss_line(self.proc, self.bitmap, self.marks, self.backend).encode()
        return self.text[off:off + size]


def wss_line(proc: ProcessId, bitmap: IdleBitmap | None, marks: MarkLog, backend: str) -> str:
    """One line: page_idle counts accessed pages since the last mark made
    through this mount (window_s; -1 if none was); clear_refs reports smaps
    Referenced since whoever last wrote /proc/PID/clear_refs."""
    check_same(proc)
    roll = smaps.read_rollup(proc.pid)
    mib = float(1 << 20)
    if bitmap is not None:
        m = bitmap.read()
        rss = int(np.count_nonzero(m.present)) << PAGE_SHIFT
        ref = int(np.count_nonzero(m.accessed)) << PAGE_SHIFT
        window = marks.window_s(proc)
    else:
        rss = roll.get("Rss", 0)
        ref = roll.get("Referenced", 0)
        window = None
    pct = 100.0 * ref / rss if rss else 0.0
    window_txt = "-1" if window is None else f"{window:.3f}"
    return (f"pid={proc.pid} comm={proc.comm.replace(' ', '_')} backend={backend} window_s={window_txt} "
            f"rss_mb={rss / mib:.2f} pss_mb={roll.get('Pss', 0) / mib:.2f} ref_mb={ref / mib:.2f} "
            f"idle_mb={max(0, rss - ref) / mib:.2f} ref_pct={pct:.1f}\n")


__all__ = ["BITMAP_FILE_BYTES", "TASK_SIZE", "BitmapFile", "FileOpError", "IdlePagesFile",
           "ImageBinding", "MarkLog", "WssFile", "errno_of", "image_key"]
