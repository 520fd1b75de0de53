"""The record file: a versioned, self-describing, crash-safe log of scan rounds.

Byte layout in docs/record-format.md.  In short::

    header   magic "\\x89IDLMAP\\n", version major.minor, metadata JSON, CRC-32
    frame*   16-byte frame header (kind, codec, length, body CRC, header CRC)
             + body: u32 JSON length, JSON, compressed blob
      L      a layout: the mappings and spans the next rounds' bitmaps cover
      R      a round: scalars (times, RSS, WSS) and, per page, the bitmaps
             accessed/present/huge/swapped, each XORed with the previous
             round's (projected onto this round's layout), then zlib
      E      the end: why recording stopped (absent if the recorder died)

Crash safety comes from the shape, not from luck: every round is one
``write()`` of one complete frame appended to the file, so a recorder
killed at any instant leaves N whole frames and at most one partial frame
at the end.  The reader drops a partial tail frame (its header says it is
longer than what is left) and keeps every finished round; damage anywhere
else fails a CRC and is reported in one sentence.

XOR against the previous round is what makes a stable working set cheap:
the same pages accessed round after round XOR to zeros, which zlib
squeezes to almost nothing (bench/record.py measures it).
"""
from __future__ import annotations

# The format's constants too: tests and tools that craft or inspect files use them.
from .format import (  # noqa: F401
                     CODEC_NONE,
                     CODEC_ZLIB,
                     FRAME,
                     FRAME_LEN,
                     HEADER,
                     MAGIC,
                     PAGE_SIZE,
                     READ_BYTES_PER_PAGE,
                     READ_FLOOR,
                     READ_RATIO,
                     U32,
                     RecordMeta,
                     make_meta,
)
from .reader import Record, open_record
from .writer import RecordWriter, _frame  # noqa: F401  (_frame: tests craft files with it)

__all__ = ["Record", "RecordMeta", "RecordWriter", "make_meta", "open_record"]
