"""Writing a record: one complete frame per write(), so a killed recorder
leaves whole frames (see the package docstring)."""
from __future__ import annotations

import json
import os
import time
import zlib

import numpy as np

from ...analysis.layout import check_sorted, project, same
from ...kernel.maps import PAGE_SHIFT, Mapping
from ...records import IdleMap, Round
from .format import (
    CODEC_NONE,
    CODEC_ZLIB,
    FRAME,
    FRAME_CRC,
    HEADER,
    MAGIC,
    U32,
    VERSION_MAJOR,
    VERSION_MINOR,
    ZLIB_LEVEL,
    pack_bits,
)


# -- writing -----------------------------------------------------------------
def _frame(kind: bytes, obj: dict, blob: bytes = b"", codec: int = CODEC_NONE) -> bytes:
    js = json.dumps(obj, separators=(",", ":")).encode()
    body = U32.pack(len(js)) + js + blob
    head = FRAME.pack(kind, codec, 0, len(body), zlib.crc32(body))
    return head + FRAME_CRC.pack(zlib.crc32(head)) + body


def _mapping_row(m: Mapping) -> list:
    return [m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path, m.kind]



class RecordWriter:
    """Append rounds to a record file, each durable once :meth:`add` returns.

    >>> with RecordWriter("x.rec", make_meta(proc, "page_idle", "page", 1.0, 30)) as w:
    ...     for r in scanner.run(30, 1.0):
    ...         w.add(r)

    The header goes to a new file next to ``path``, which then replaces
    ``path`` (see idlemap.outputs): an existing record there is kept as
    ``path.1`` (then ``.2``, ...), so a repeated command never destroys a
    recording, and anything that is not a regular file (a device, a FIFO,
    a symlink, a directory) is refused with one sentence, never replaced.
    """

    def __init__(self, path: str, meta: dict, fsync: bool = True, level: int = ZLIB_LEVEL):
        from ... import outputs
        self.path = path
        self.fsync = fsync
        self.level = level
        js = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
        head = HEADER.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, 0, len(js))
        out = outputs.Output(path, "the record", keep_old=True)
        self._fd = out.fd
        self._size = 0
        try:
            self._write(head + js + U32.pack(zlib.crc32(head + js)))
            # Published only once the header is on disk: the file at
            # ``path`` is a readable record from its first instant, and
            # rounds are appended to it in place (crash safety, below).
            out.publish()
        except OSError as e:
            out.discard()
            raise outputs._error(e, path, "the record") from None
        except BaseException:
            out.discard()
            raise
        self.kept_as = out.kept
        self._layouts: dict[tuple, int] = {}
        self._prev: tuple[np.ndarray, list[np.ndarray]] | None = None
        self.rounds = 0
        self.closed = False

    @property
    def size_bytes(self) -> int:
        return self._size

    def _write(self, data: bytes) -> None:
        # A frame is written whole or the file is cut back to before it:
        # an exception (Ctrl-C between two partial writes, ENOSPC) must not
        # leave half a frame that later frames would sit behind.
        good = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fdatasync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, good)
                os.lseek(self._fd, good, os.SEEK_SET)
            except OSError:
                pass
            raise
        self._size = good + len(data)

    def _layout_id(self, key: tuple, build) -> tuple[int, bytes]:
        lid = self._layouts.get(key)
        if lid is not None:
            return lid, b""
        lid = len(self._layouts)
        mappings, spans = build()
        frame = _frame(b"L", {"layout": lid, "mappings": mappings, "spans": spans})
        self._layouts[key] = lid
        return lid, frame

    def add(self, rnd: Round) -> int:
        """Append one round; returns the bytes it took on disk."""
        if self.closed:
            raise ValueError("record already closed")
        s = rnd.sample
        scalars = {"round": self.rounds, "wall_time_s": rnd.wall_time_s, "time_s": s.time_s,
                   "window_s": s.window_s, "rss_bytes": s.rss_bytes, "pss_bytes": s.pss_bytes,
                   "accessed_bytes": s.accessed_bytes, "scan_s": s.scan_s}
        m = s.idle_map
        if m is None:
            # mapping-granular backends (clear_refs): totals per mapping only
            maps = [u.mapping for u in s.by_mapping]
            lid, lframe = self._layout_id(tuple(maps), lambda: ([_mapping_row(x) for x in maps], []))
            scalars.update(layout=lid, npages=0,
                           usage=[[i, u.rss_bytes, u.pss_bytes, u.accessed_bytes, u.idle_bytes, u.swap_bytes]
                                  for i, u in enumerate(s.by_mapping)])
            data = lframe + _frame(b"R", scalars)
        else:
            data = self._page_round(m, scalars)
        try:
            self._write(data)
        except OSError as e:        # ENOSPC, EIO: one sentence; the finished rounds stay readable
            from ...outputs import _error
            raise _error(e, self.path, "the record") from None
        self.rounds += 1
        return len(data)

    def _page_round(self, m: IdleMap, scalars: dict) -> bytes:
        key = tuple((sp.mapping, sp.start, sp.end) for sp in m.spans)

        def build():
            maps: list[Mapping] = []
            index: dict[Mapping, int] = {}
            rows = []
            for sp in m.spans:
                if sp.mapping not in index:
                    index[sp.mapping] = len(maps)
                    maps.append(sp.mapping)
                rows.append([index[sp.mapping], sp.start, sp.end])
            return [_mapping_row(x) for x in maps], rows

        lid, lframe = self._layout_id(key, build)
        ranges = np.array([[sp.start >> PAGE_SHIFT, sp.end >> PAGE_SHIFT] for sp in m.spans],
                          dtype=np.int64).reshape(-1, 2)
        if not check_sorted(ranges):
            raise ValueError("spans must be sorted and must not overlap")
        bits = [m.present & ~m.idle, m.present, m.huge, m.swapped]
        packed = [pack_bits(b) for b in bits]
        delta = self._prev is not None
        if delta:
            pranges, pprev = self._prev
            if same(pranges, ranges):
                base = pprev
            else:
                n_old = int((pranges[:, 1] - pranges[:, 0]).sum()) if pranges.size else 0
                base = [pack_bits(project(np.unpackbits(p, count=n_old, bitorder="little").view(bool),
                                      pranges, ranges, False)) for p in pprev]
            coded = [p ^ b for p, b in zip(packed, base)]
        else:
            coded = packed
        self._prev = (ranges, packed)
        # A bitmap whose coded form is all zeros (unchanged since the last
        # round, or empty) is left out: a stable round then costs no
        # decompression at all on reading.
        zero = [k for k, c in enumerate(coded) if not c.any()]
        blob = zlib.compress(b"".join(c.tobytes() for k, c in enumerate(coded) if k not in zero), self.level)
        scalars.update(layout=lid, npages=m.npages, delta=delta)
        if zero:
            scalars["zero"] = zero
        return lframe + _frame(b"R", scalars, blob, CODEC_ZLIB)

    def close(self, reason: str = "done") -> None:
        """Write the end frame (why recording stopped) and close."""
        if self.closed:
            return
        self.closed = True
        try:
            self._write(_frame(b"E", {"rounds": self.rounds, "reason": reason, "end_time": time.time()}))
        except OSError as e:        # the rounds before stay readable (a file without an end frame)
            from ...outputs import _error
            raise _error(e, self.path, "the record") from None
        finally:
            os.close(self._fd)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is None:
            reason = "done"
        elif issubclass(et, KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = f"stopped: {ev}"
        self.close(reason)
