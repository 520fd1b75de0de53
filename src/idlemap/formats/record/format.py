"""The record format's constants and its metadata (docs/record-format.md)."""
from __future__ import annotations

import platform
import socket
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from ...kernel.maps import PAGE_SIZE

MAGIC = b"\x89IDLMAP\n"       # high bit and "\n": 7-bit or newline-mangling copies show at once
VERSION_MAJOR = 1             # readers refuse another major version
VERSION_MINOR = 0             # minors only add optional JSON keys / frame kinds; readers skip those
HEADER = struct.Struct("<8sHHII")           # magic, major, minor, flags, meta_len
FRAME = struct.Struct("<cBHII")             # kind, codec, reserved, body_len, body_crc
FRAME_CRC = struct.Struct("<I")             # CRC-32 of the 12 bytes above
FRAME_LEN = FRAME.size + FRAME_CRC.size     # 16
U32 = struct.Struct("<I")

CODEC_NONE, CODEC_ZLIB = 0, 1
BITMAPS = ("accessed", "present", "huge", "swapped")
GRANULARITIES = ("page", "region", "mapping")    # the backend's; rounds say for themselves what they hold
MAX_META_BYTES = 16 << 20
MAX_FRAME_BYTES = 1 << 30
MAX_PAGES = 1 << 36            # 256 TiB of 4 KiB pages: beyond any real layout
ZLIB_MAX_RATIO = 1032          # deflate cannot expand more: bounds what a blob may claim
# Reading a file never needs more memory than READ_RATIO times its size
# (docs/record-format.md), or READ_FLOOR for small files, so that a short
# recording of a process with a large sparse heap still reads (128 MiB /
# 20 B: 6.7 M pages, 25 GiB of address space).  What grows with a layout's
# pages is decoding a round: current and previous packed bitmaps, and the
# unpacked per-page arrays of Record.rounds() -- READ_BYTES_PER_PAGE bytes
# per page (measured in tests/unit/test_record_bounds.py).
READ_RATIO = 1000
READ_FLOOR = 128 << 20
READ_BYTES_PER_PAGE = 20       # measured ~18: two rounds alive (the caller's and the next) at ~9 each
MAX_SECONDS = 1e11             # year 5138: any time or duration beyond is damage (and overflows datetime)
ZLIB_LEVEL = 6

SCHEMA_KEYS = ("pid", "comm", "cmdline", "kernel", "hostname", "backend", "granularity",
               "page_size", "interval_s", "rounds_planned", "start_time", "tlb_flush",
               "idlemap_version")


# -- metadata ----------------------------------------------------------------
@dataclass(frozen=True)
class RecordMeta:
    """What the header says about the recording."""
    version: tuple[int, int]
    pid: int
    comm: str
    cmdline: list[str]
    kernel: str               # uname release of the recording host
    hostname: str
    backend: str              # page_idle, clear_refs ...
    granularity: str          # the backend's: "page", "region" (bitmaps) or "mapping" (totals only)
    page_size: int
    interval_s: float
    rounds_planned: int | None
    start_time: float         # epoch seconds when recording started
    tlb_flush: str = "none"
    idlemap_version: str = ""
    auto_interval: dict | None = None
    extra: dict = field(default_factory=dict)     # keys this reader does not know

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in SCHEMA_KEYS}
        d["auto_interval"] = self.auto_interval
        d.update(self.extra)
        return d


def make_meta(proc, backend: str, granularity: str, interval_s: float,
              rounds_planned: int | None, tlb_flush: str = "none",
              auto_interval: dict | None = None, guest=None) -> dict:
    """Header metadata for recording process ``proc`` (a ProcessId).
    ``guest`` (a vm.GuestLayout): the rounds are a VM's, indexed by
    guest-physical address; its layout is kept with them."""
    from ... import __version__
    from ...kernel.process import cmdline
    meta = {"pid": proc.pid, "comm": proc.comm, "cmdline": cmdline(proc.pid),
            "kernel": platform.release(), "hostname": socket.gethostname(),
            "backend": backend, "granularity": granularity, "page_size": PAGE_SIZE,
            "interval_s": float(interval_s), "rounds_planned": rounds_planned,
            "start_time": time.time(), "tlb_flush": tlb_flush, "idlemap_version": __version__,
            "auto_interval": auto_interval, "address_space": "virtual"}
    if guest is not None:
        from ...vm import layout_json
        meta.update(address_space="guest-physical", guest=layout_json(guest))
    return meta

def pack_bits(a: np.ndarray) -> np.ndarray:
    return np.packbits(a, bitorder="little")
