"""/proc/PID/smaps and smaps_rollup: per-mapping byte counters."""
from __future__ import annotations

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


def read_rollup(pid: int) -> dict[str, int]:
    with proc_errors(pid, "smaps_rollup"):
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            return parse_rollup(f.read().decode("utf-8", "replace"))
