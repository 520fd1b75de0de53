"""Reading a record: every length and count bounded, every frame checked by
CRC; a partial tail frame is dropped, any other damage is one sentence."""
from __future__ import annotations

import json
import math
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ...analysis.layout import check_sorted, project, same
from ...analysis.usage import mapping_usage
from ...errors import AccessDenied, BadInput
from ...kernel.maps import PAGE_SHIFT, PAGE_SIZE, Mapping
from ...records import IdleMap, MappingUsage, PackedRound, Round, Span, WssSample
from .format import (
    BITMAPS,
    CODEC_NONE,
    CODEC_ZLIB,
    FRAME,
    FRAME_CRC,
    FRAME_LEN,
    GRANULARITIES,
    HEADER,
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_META_BYTES,
    MAX_PAGES,
    MAX_SECONDS,
    READ_BYTES_PER_PAGE,
    READ_FLOOR,
    READ_RATIO,
    SCHEMA_KEYS,
    U32,
    VERSION_MAJOR,
    ZLIB_MAX_RATIO,
    RecordMeta,
    pack_bits,
)


# -- reading -----------------------------------------------------------------
class _Corrupt(Exception):
    """Internal: a reason, turned into BadInput with the file name and offset."""


def _is_int(v) -> bool:
    return type(v) is int


def _int(d: dict, key: str, lo: int = 0, hi: int = (1 << 64) - 1, optional: bool = False):
    v = d.get(key)
    if v is None and optional:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise _Corrupt(f"field {key!r} is {v!r}, not a whole number in [{lo}, {hi}]")
    return v


def _num(d: dict, key: str, default: float | None = None, lo: float = -MAX_SECONDS) -> float:
    v = d.get(key, default)
    if not (_is_int(v) or type(v) is float) or not math.isfinite(v) or not lo <= v <= MAX_SECONDS:
        raise _Corrupt(f"field {key!r} is {v!r}, not a number of seconds in [{lo:g}, {MAX_SECONDS:g}]")
    return float(v)


def _str(d: dict, key: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if type(v) is not str:
        raise _Corrupt(f"field {key!r} is {v!r}, not a string")
    return v


def _json(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Corrupt("its JSON does not parse") from None
    if type(obj) is not dict:
        raise _Corrupt("its JSON is not an object")
    return obj


def _parse_mapping(row) -> Mapping:
    if type(row) is not list or len(row) != 8:
        raise _Corrupt("a mapping row is not an 8-item list")
    start, end, perms, off, dev, inode, path, kind = row
    if not all(_is_int(v) and 0 <= v < 1 << 64 for v in (start, end, off, inode)) or start >= end:
        raise _Corrupt("a mapping has a bad address range")
    if not all(type(v) is str for v in (perms, dev, path, kind)):
        raise _Corrupt("a mapping has a non-string field")
    return Mapping(start, end, perms, off, dev, inode, path, kind)


@dataclass(frozen=True)
class _Layout:
    mappings: list[Mapping]
    spans: list[Span]
    ranges: np.ndarray
    npages: int


def _parse_layout(obj: dict) -> tuple[int, _Layout]:
    lid = _int(obj, "layout", 0, 1 << 31)
    rows, srows = obj.get("mappings"), obj.get("spans")
    if type(rows) is not list or type(srows) is not list:
        raise _Corrupt("a layout lacks its mapping or span list")
    maps = [_parse_mapping(r) for r in rows]
    spans = []
    off = 0
    for r in srows:
        if (type(r) is not list or len(r) != 3 or not all(_is_int(v) for v in r)
                or not 0 <= r[0] < len(maps)):
            raise _Corrupt("a span row is not [mapping index, start, end]")
        mi, lo, hi = r
        if lo % PAGE_SIZE or hi % PAGE_SIZE or not 0 <= lo < hi < 1 << 64:
            raise _Corrupt("a span has a bad address range")
        spans.append(Span(maps[mi], lo, hi, off))
        off += (hi - lo) >> PAGE_SHIFT
        if off > MAX_PAGES:
            raise _Corrupt("a layout covers more pages than any address space has")
    ranges = np.array([[s.start >> PAGE_SHIFT, s.end >> PAGE_SHIFT] for s in spans],
                      dtype=np.int64).reshape(-1, 2)
    if not check_sorted(ranges):
        raise _Corrupt("a layout's spans overlap or are out of order")
    return lid, _Layout(maps, spans, ranges, off)


@dataclass(frozen=True)
class _RoundFrame:
    obj: dict
    layout: _Layout
    codec: int
    blob_off: int             # where the round's blob is: read again when the round is decoded
    blob_len: int
    offset: int


class _Source:
    """The bytes of a record: in memory, or an open file read piece by piece.

    A file is read with pread, a frame at a time: the reader holds one frame
    body (to check its CRC) while indexing and one blob while decoding, never
    the whole file, so a huge or sparse file costs what is parsed.  (Not
    mmap: a file cut shorter while mapped -- a recorder truncating a failed
    frame -- would kill the reader with SIGBUS; pread just reads less.)"""

    def __init__(self, data: bytes | None = None, file=None, size: int = 0):
        self._data = data
        self._file = file
        self.size = len(data) if data is not None else size

    def read(self, off: int, n: int) -> bytes:
        n = max(0, min(n, self.size - off))
        if self._data is not None:
            return bytes(self._data[off:off + n])
        if self._file is None:
            return b""
        out = []
        while n > 0:
            chunk = os.pread(self._file.fileno(), min(n, 1 << 26), off)
            if not chunk:
                break            # the file got shorter: the caller sees a short read
            out.append(chunk)
            off += len(chunk)
            n -= len(chunk)
        return b"".join(out)

    def close(self) -> None:
        self._data = b""
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_header(data: bytes, path: str) -> tuple[RecordMeta, int]:
    if len(data) == 0:
        raise BadInput(f"{path} is empty, not an idlemap record")
    if data[:len(MAGIC)] != MAGIC[:min(len(data), len(MAGIC))]:
        raise BadInput(f"{path} is not an idlemap record (it does not start with the record magic)")
    if len(data) < HEADER.size + U32.size:
        raise BadInput(f"{path} is cut short inside its header ({len(data)} bytes): not a usable record")
    magic, major, minor, flags, meta_len = HEADER.unpack_from(data)
    if major != VERSION_MAJOR:
        newer = "a newer" if major > VERSION_MAJOR else "an older"
        raise BadInput(f"{path} is an idlemap record of format version {major}.{minor}, written by "
                       f"{newer} idlemap; this one reads version {VERSION_MAJOR}.x")
    if meta_len > MAX_META_BYTES:
        raise BadInput(f"{path} has a corrupt header (metadata length {meta_len} bytes)")
    end = HEADER.size + meta_len
    if len(data) < end + U32.size:
        raise BadInput(f"{path} is cut short inside its header: not a usable record")
    (crc,) = U32.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise BadInput(f"{path} has a corrupt header (checksum mismatch)")
    try:
        obj = _json(data[HEADER.size:end])
        gran = _str(obj, "granularity")
        if gran not in GRANULARITIES:
            raise _Corrupt(f"granularity {gran!r} is unknown")
        cmd = obj.get("cmdline", [])
        if type(cmd) is not list or not all(type(a) is str for a in cmd):
            raise _Corrupt("cmdline is not a list of strings")
        planned = _int(obj, "rounds_planned", 0, 1 << 62, optional=True)
        auto = obj.get("auto_interval")
        if auto is not None and type(auto) is not dict:
            raise _Corrupt("auto_interval is not an object")
        meta = RecordMeta(
            version=(major, minor), pid=_int(obj, "pid", 0, 1 << 32), comm=_str(obj, "comm", ""),
            cmdline=cmd, kernel=_str(obj, "kernel", ""), hostname=_str(obj, "hostname", ""),
            backend=_str(obj, "backend"), granularity=gran, page_size=_int(obj, "page_size", 1, 1 << 40),
            interval_s=_num(obj, "interval_s", lo=0.0), rounds_planned=planned,
            start_time=_num(obj, "start_time", lo=0.0), tlb_flush=_str(obj, "tlb_flush", "none"),
            idlemap_version=_str(obj, "idlemap_version", ""), auto_interval=auto,
            extra={k: v for k, v in obj.items() if k not in SCHEMA_KEYS and k != "auto_interval"})
    except _Corrupt as e:
        raise BadInput(f"{path} has a corrupt header: {e}") from None
    if meta.page_size != PAGE_SIZE:
        raise BadInput(f"{path} was recorded with {meta.page_size}-byte pages and this machine uses "
                       f"{PAGE_SIZE}-byte pages; read it on a machine like the one it came from")
    return meta, end + U32.size


class Record:
    """A record file opened for reading (see :func:`open_record`).

    Iterating yields :class:`~idlemap.records.Round` objects, exactly what a
    live :class:`~idlemap.scan.Scanner` yields: per-page rounds carry an
    :class:`~idlemap.records.IdleMap` and per-mapping totals, mapping-granular
    rounds only the totals.
    """

    def __init__(self, path: str, data: bytes | _Source, salvage: bool = False):
        self.path = path
        self._src = data if isinstance(data, _Source) else _Source(bytes(data))
        self._size = self._src.size
        self.meta, off = _read_header(self._src.read(0, HEADER.size + MAX_META_BYTES + U32.size), path)
        # Pages a round may declare: decoding one costs READ_BYTES_PER_PAGE
        # a page, and the whole read stays within READ_RATIO x the file.
        self.max_pages = max(READ_RATIO * self._size, READ_FLOOR) // READ_BYTES_PER_PAGE
        self._frames: list[_RoundFrame] = []
        self.complete = False            # an end frame was found: the recorder finished cleanly
        self.end_reason: str | None = None
        self.truncated_bytes = 0         # a partial frame at the end (recorder killed mid-write)
        self.damaged_at: int | None = None   # salvage mode: offset of the first bad frame
        self._scan(off, salvage)

    # -- frame index -------------------------------------------------------
    def _scan(self, off: int, salvage: bool) -> None:
        n = self._size
        layouts: dict[int, _Layout] = {}
        while off < n:
            try:
                off = self._frame_at(off, layouts)
            except _Corrupt as e:
                if salvage:
                    self.damaged_at = off
                    return
                raise BadInput(f"{self.path} is corrupt at byte {off} (after {len(self._frames)} "
                               f"rounds): {e}") from None
            if off < 0:           # partial tail frame
                return

    def _frame_at(self, off: int, layouts: dict) -> int:
        n = self._size
        head = self._src.read(off, FRAME_LEN)
        if len(head) < FRAME_LEN:
            self.truncated_bytes = n - off
            return -1
        kind, codec, reserved, blen, bcrc = FRAME.unpack_from(head, 0)
        (hcrc,) = FRAME_CRC.unpack_from(head, FRAME.size)
        if zlib.crc32(head[:FRAME.size]) != hcrc:
            raise _Corrupt("a frame header fails its checksum")
        if reserved != 0 or blen > MAX_FRAME_BYTES or blen < U32.size:
            raise _Corrupt("a frame header has impossible fields")
        start, end = off + FRAME_LEN, off + FRAME_LEN + blen
        if end > n:
            self.truncated_bytes = n - off
            return -1
        body = memoryview(self._src.read(start, blen))     # the size was checked against the file
        if len(body) < blen:
            self.truncated_bytes = n - off
            return -1
        if zlib.crc32(body) != bcrc:
            raise _Corrupt("a frame fails its checksum")
        if self.complete:
            raise _Corrupt("data follows the end frame")
        (jlen,) = U32.unpack_from(body, 0)
        if jlen > blen - U32.size:
            raise _Corrupt("a frame's JSON length exceeds the frame")
        obj = _json(bytes(body[U32.size:U32.size + jlen]))
        blob = (start + U32.size + jlen, blen - U32.size - jlen)
        if kind == b"L":
            lid, lay = _parse_layout(obj)
            if lay.npages > self.max_pages:
                raise _Corrupt(f"a layout declares {lay.npages} pages, more than a {n}-byte record can "
                               f"hold (reading is bounded at {READ_RATIO}x the file's size, "
                               f"{self.max_pages} pages here)")
            layouts[lid] = lay
        elif kind == b"R":
            self._add_round(obj, layouts, codec, blob, off)
        elif kind == b"E":
            self.complete = True
            r = obj.get("reason")
            self.end_reason = r if type(r) is str else None
        # other kinds: a later minor version's optional frames, skipped
        return end

    def _add_round(self, obj: dict, layouts: dict, codec: int, blob: tuple[int, int], off: int) -> None:
        idx = _int(obj, "round", 0, 1 << 62)
        if idx != len(self._frames):
            raise _Corrupt(f"round {idx} is out of sequence (expected {len(self._frames)})")
        lid = _int(obj, "layout", 0, 1 << 31)
        if lid not in layouts:
            raise _Corrupt(f"round {idx} refers to layout {lid}, which was not defined before it")
        lay = layouts[lid]
        # Only validated values go on: decoding later reads nothing else.
        clean: dict = {"round": idx, "layout": lid}
        for k in ("wall_time_s", "time_s", "window_s", "scan_s"):
            clean[k] = _num(obj, k, 0.0)
        for k in ("rss_bytes", "accessed_bytes"):
            clean[k] = _int(obj, k, 0, (1 << 63) - 1)
        clean["pss_bytes"] = _int(obj, "pss_bytes", -1, (1 << 63) - 1)
        if "usage" not in obj:          # per-page bitmaps
            npages = _int(obj, "npages", 0, MAX_PAGES)
            if npages != lay.npages:
                raise _Corrupt(f"round {idx} has {npages} pages but its layout {lay.npages}")
            if codec not in (CODEC_NONE, CODEC_ZLIB):
                raise _Corrupt(f"round {idx} uses unknown compression {codec}")
            if type(obj.get("delta", False)) is not bool or (idx == 0 and obj.get("delta")):
                raise _Corrupt(f"round {idx} has a bad delta flag")
            zero = obj.get("zero", [])
            if (type(zero) is not list or not all(_is_int(k) and 0 <= k < len(BITMAPS) for k in zero)
                    or len(set(zero)) != len(zero)):
                raise _Corrupt(f"round {idx} has a bad list of all-zero bitmaps")
            raw = (len(BITMAPS) - len(zero)) * ((npages + 7) // 8)
            limit = blob[1] if codec == CODEC_NONE else blob[1] * ZLIB_MAX_RATIO + 64
            if raw > limit:
                raise _Corrupt(f"round {idx} claims more bitmap data than its frame can hold")
            clean.update(npages=npages, delta=bool(obj.get("delta", False)), zero=sorted(zero))
        else:
            usage = obj.get("usage")
            if type(usage) is not list:
                raise _Corrupt(f"round {idx} has no per-mapping usage list")
            for u in usage:
                if (type(u) is not list or len(u) != 6 or not all(_is_int(v) for v in u)
                        or not 0 <= u[0] < len(lay.mappings)
                        or not all(-1 <= v < 1 << 63 for v in u[1:])):
                    raise _Corrupt(f"round {idx} has a bad per-mapping usage row")
            clean["usage"] = usage
        self._frames.append(_RoundFrame(clean, lay, codec, blob[0], blob[1], off))

    # -- public API --------------------------------------------------------
    def __len__(self) -> int:
        return len(self._frames)

    @property
    def granularity(self) -> str:
        return self.meta.granularity

    def __iter__(self) -> Iterator[Round]:
        return self.rounds()

    def rounds(self, start: int = 0, stop: int | None = None) -> Iterator[Round]:
        """Rounds ``start`` .. ``stop - 1``, decoded one at a time."""
        for r in self.packed_rounds(start, stop):
            yield self._page_round(r) if isinstance(r, PackedRound) else r

    def packed_rounds(self, start: int = 0, stop: int | None = None) -> Iterator[PackedRound | Round]:
        """Like :meth:`rounds`, but per-page rounds stay packed bit rows
        (:class:`PackedRound`); mapping-granular rounds are Rounds as usual."""
        stop = len(self._frames) if stop is None else min(stop, len(self._frames))
        prev: tuple[np.ndarray, list[np.ndarray]] | None = None
        for i in range(0, stop):
            f = self._frames[i]
            if "usage" in f.obj:
                if i >= start:
                    yield self._mapping_round(i, f)
                continue
            try:
                packed = self._decode_bits(f, prev)
            except _Corrupt as e:
                raise BadInput(f"{self.path} is corrupt at byte {f.offset} (round {i}): {e}") from None
            prev = (f.layout.ranges, packed)
            if i >= start:
                o = f.obj
                yield PackedRound(i, o["wall_time_s"], o["time_s"], o["window_s"], o["pss_bytes"],
                                  o["scan_s"], list(f.layout.spans), f.layout.npages, *packed)

    def _decode_bits(self, f: _RoundFrame, prev) -> list[np.ndarray]:
        n = f.layout.npages
        nb = (n + 7) // 8
        zero = f.obj["zero"]
        stored = [k for k in range(len(BITMAPS)) if k not in zero]
        raw_len = len(stored) * nb
        blob = self._src.read(f.blob_off, f.blob_len)
        if len(blob) != f.blob_len:
            raise _Corrupt("the file got shorter while it was read")
        if f.codec == CODEC_ZLIB:
            d = zlib.decompressobj()
            try:
                # max_length 0 would mean "unlimited": ask for one byte to
                # prove an empty layout's blob really is empty
                raw = d.decompress(blob, raw_len or 1)
            except zlib.error:
                raise _Corrupt("its bitmaps do not decompress") from None
            if len(raw) != raw_len or not d.eof or d.unused_data or d.unconsumed_tail:
                raise _Corrupt("its bitmaps have the wrong length")
        else:
            raw = blob
            if len(raw) != raw_len:
                raise _Corrupt("its bitmaps have the wrong length")
        arr = np.frombuffer(raw, dtype=np.uint8)
        bits = [np.zeros(nb, np.uint8) for _ in BITMAPS]
        for j, k in enumerate(stored):
            bits[k] = arr[j * nb:(j + 1) * nb]
        if f.obj["delta"]:
            if prev is None:
                raise _Corrupt("a delta round has no round before it")
            pranges, pbits = prev
            if same(pranges, f.layout.ranges):
                base = pbits
            else:
                n_old = int((pranges[:, 1] - pranges[:, 0]).sum()) if pranges.size else 0
                base = [pack_bits(project(np.unpackbits(p, count=n_old, bitorder="little").view(bool),
                                      pranges, f.layout.ranges, False)) for p in pbits]
            bits = [p.copy() if k in zero else b ^ p for k, (b, p) in enumerate(zip(bits, base))]
        else:
            bits = [b.copy() for b in bits]
        # accessed implies present; a page is huge or swapped only if mapped
        bits[0] &= bits[1]
        return bits

    def _page_round(self, p: PackedRound) -> Round:
        acc, present, huge, swapped = (p.unpacked(k) for k in BITMAPS)
        m = IdleMap(self.meta.pid, p.spans, present, present & ~acc, huge, swapped, p.time_s, p.window_s)
        s = WssSample(pid=self.meta.pid, backend=self.meta.backend, time_s=p.time_s, window_s=p.window_s,
                      rss_bytes=int(np.count_nonzero(present)) << PAGE_SHIFT, pss_bytes=p.pss_bytes,
                      accessed_bytes=int(np.count_nonzero(acc)) << PAGE_SHIFT,
                      by_mapping=mapping_usage(p.spans, present, acc, swapped), idle_map=m, scan_s=p.scan_s)
        return Round(p.index, p.wall_time_s, s)

    def _mapping_round(self, i: int, f: _RoundFrame) -> Round:
        o = f.obj
        maps = f.layout.mappings
        by = [MappingUsage(maps[u[0]], u[1], u[2], u[3], u[4], u[5]) for u in o["usage"]]
        s = WssSample(pid=self.meta.pid, backend=self.meta.backend, time_s=o["time_s"],
                      window_s=o["window_s"], rss_bytes=o["rss_bytes"], pss_bytes=o["pss_bytes"],
                      accessed_bytes=o["accessed_bytes"], by_mapping=by, idle_map=None, scan_s=o["scan_s"])
        return Round(i, o["wall_time_s"], s)

    def history_bytes(self) -> int:
        """About what analysis.hotness.build_history and its per-page
        statistics need for every round of this record: two packed bit rows
        per round over the largest layout, and ~24 bytes per page of counts.
        A report checks it against the memory available before starting,
        since it can exceed the reader's own bound (many rounds of a large,
        stable address space compress to little on disk)."""
        pp = [f for f in self._frames if "usage" not in f.obj]
        if not pp:
            return 0
        n = max(f.layout.npages for f in pp)
        return len(pp) * 2 * ((n + 7) // 8) + 24 * n

    def describe(self) -> dict:
        """Everything about the file except the rounds themselves."""
        return {"path": self.path, "format_version": f"{self.meta.version[0]}.{self.meta.version[1]}",
                "meta": self.meta.as_dict(), "rounds": len(self), "complete": self.complete,
                "end_reason": self.end_reason, "truncated_tail_bytes": self.truncated_bytes,
                "size_bytes": self._size}

    def close(self) -> None:
        self._frames = []
        self._src.close()

    def __enter__(self) -> "Record":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_record(path: str | os.PathLike, salvage: bool = False) -> Record:
    """Open a record file written by ``idlemap record`` (or :class:`RecordWriter`).

    A file cut short by a killed recorder opens with every finished round
    (``complete`` is False).  Anything else wrong -- not a record, another
    format version, damaged bytes -- raises :class:`~idlemap.errors.BadInput`
    with one sentence.  With ``salvage``, damage ends the record instead:
    the rounds before the first bad frame are kept (``damaged_at`` says where).
    """
    p = os.fspath(path)
    try:
        # A FIFO, /dev/zero or a terminal is refused before it is opened
        # (opening a FIFO for reading blocks until a writer comes); the open
        # is non-blocking anyway, and the opened file is checked again, in
        # case the path changed between the two.
        _require_regular(p, os.stat(p).st_mode)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise BadInput(f"no such record file: {p}") from None
    except PermissionError:
        raise AccessDenied(p) from None
    except OSError as e:
        raise BadInput(f"cannot read {p}: {(e.strerror or str(e)).lower()}") from None
    f = os.fdopen(fd, "rb", buffering=0)
    try:
        st = os.fstat(fd)
        _require_regular(p, st.st_mode)
        # Read a frame at a time (_Source), not whole: a huge or sparse file
        # costs what is parsed, and a non-record is refused after its first bytes.
        src = _Source(file=f, size=st.st_size)
        return Record(p, src, salvage=salvage)
    except OSError as e:
        f.close()
        raise BadInput(f"cannot read {p}: {(e.strerror or str(e)).lower()}") from None
    except BaseException:
        f.close()
        raise


def _require_regular(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise BadInput(f"{path} is a directory, not a record file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise BadInput(f"{path} is {kind}, not a record file (records are regular files)")
