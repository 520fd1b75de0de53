"""/proc/PID/smaps and smaps_rollup: per-mapping byte counters."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import proc_errors
from .maps import Mapping, parse_maps


@dataclass(slots=True)
class SmapsEntry:
    mapping: Mapping
    # Field name -> bytes (values in kB in the file are converted); e.g.
    # Rss, Pss, Referenced, Anonymous, AnonHugePages, Swap, Shared_Clean...
    fields_bytes: dict[str, int] = field(default_factory=dict)
    # The VmFlags mnemonics (rd wr ex ... sd): "sd" is VM_SOFTDIRTY, shown
    # only on kernels with CONFIG_MEM_SOFT_DIRTY.
    vm_flags: tuple[str, ...] = ()

    def get(self, name: str) -> int:
        return self.fields_bytes.get(name, 0)


def _is_header(line: str) -> bool:
    # Header lines start with "lo-hi " (hex); field lines with "Name:".
    head = line.split(" ", 1)[0]
    return "-" in head and not head.endswith(":")


def parse_smaps(text: str) -> list[SmapsEntry]:
    entries: list[SmapsEntry] = []
    for line in text.splitlines():
        if not line:
            continue
        if _is_header(line):
            entries.append(SmapsEntry(parse_maps(line)[0]))
            continue
        name, _, rest = line.partition(":")
        vals = rest.split()
        if entries and len(vals) == 2 and vals[1] == "kB":
            entries[-1].fields_bytes[name] = int(vals[0]) * 1024
        elif entries and name == "VmFlags":
            entries[-1].vm_flags = tuple(vals)
    return entries


def parse_rollup(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        vals = rest.split()
        if len(vals) == 2 and vals[1] == "kB":
            out[name] = int(vals[0]) * 1024
    return out


def read_smaps(pid: int) -> list[SmapsEntry]:
    with proc_errors(pid, "smaps"):
        with open(f"/proc/{pid}/smaps", "rb") as f:
            return parse_smaps(f.read().decode("utf-8", "replace"))


def field_kb(data: bytes, name: bytes, start: int, end: int) -> int:
    """Value (kB) of field ``name`` (b"\\nRss:") in the smaps record of
    ``data`` (the raw file) between ``start`` and ``end``; -1 if absent.
    Scans bytes, no decode or split: see :func:`unpopulated`."""
    j = data.find(name, start, end if end > 0 else len(data))
    if j < 0:
        return -1
    j += len(name)
    return int(data[j:data.index(b"k", j)])


def unpopulated(pid: int, mappings: Iterable[Mapping]) -> set[int]:
    """Starts of those ``mappings`` that hold no page (Rss and Swap 0).

    For a few big mappings among many: finds each record by its header
    bytes instead of parsing the whole file (a process can have tens of
    thousands of mappings, and this runs on every page-idle walk).  A
    mapping whose bounds changed since the caller read maps is not named."""
    with proc_errors(pid, "smaps"):
        with open(f"/proc/{pid}/smaps", "rb") as f:
            return unpopulated_in(f.read(), mappings)


def unpopulated_in(data: bytes, mappings: Iterable[Mapping]) -> set[int]:
    """:func:`unpopulated` over the raw bytes of an smaps file."""
    empty = set()
    for m in mappings:
        key = b"%08x-%08x " % (m.start, m.end)
        i = data.find(key)
        while i > 0 and data[i - 1] != 10:      # only at the start of a line
            i = data.find(key, i + 1)
        if i < 0:
            continue          # the mapping changed since maps: the caller reads it
        end = data.find(b"\nVmFlags:", i)
        if field_kb(data, b"\nRss:", i, end) == 0 and field_kb(data, b"\nSwap:", i, end) == 0:
            empty.add(m.start)
    return empty


def read_rollup(pid: int) -> dict[str, int]:
    with proc_errors(pid, "smaps_rollup"):
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            return parse_rollup(f.read().decode("utf-8", "replace"))
