"""/proc/PID/maps: the process's mappings, each with a kind label."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import proc_errors

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1

# Kinds, in the words users see in reports.
SPECIAL = {"[heap]": "heap", "[vdso]": "vdso", "[vvar]": "vvar", "[vsyscall]": "vsyscall",
           "[vvar_vclock]": "vvar"}

# Mappings whose pages cannot be tracked: vsyscall is not in the page tables
# of the process, and vvar/vdso pages are kernel pages, never on an LRU list.
UNTRACKABLE_KINDS = frozenset({"vsyscall", "vvar", "vdso"})
# The same, as the path field of a maps line (for the bytes-level parser).
_UNTRACKABLE_PATHS = tuple(p.encode() for p, k in SPECIAL.items() if k in UNTRACKABLE_KINDS)
_UNTRACKABLE_ENDINGS = tuple(b" " + p for p in _UNTRACKABLE_PATHS)


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int          # first byte (inclusive)
    end: int            # last byte + 1
    perms: str          # e.g. "rw-p"
    offset: int
    dev: str
    inode: int
    path: str           # "" for anonymous memory
    kind: str           # heap, stack, anon, file, shmem, hugetlb, vdso, vvar, vsyscall, other

    @property
    def size_bytes(self) -> int:
        return self.end - self.start

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def label(self) -> str:
        """What a report prints for this mapping: the path, or the kind."""
        if self.path and not self.path.startswith("["):
            return self.path
        return f"[{self.kind}]"

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"


def classify(path: str, perms: str, inode: int) -> str:
    if path in SPECIAL:
        return SPECIAL[path]
    if path.startswith("[stack"):
        return "stack"
    if path.startswith("[anon") or path == "":
        return "anon"
    if path.startswith("/SYSV") or path.startswith("/dev/shm/") or path.startswith("/memfd:"):
        return "shmem"
    if path.startswith("/anon_hugepage") or "hugetlb" in path:
        return "hugetlb"
    if path.startswith("/"):
        return "shmem" if perms[3:4] == "s" and path.endswith(" (deleted)") else "file"
    return "other"


def parse_maps(text: str | bytes) -> list[Mapping]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        if not line:
            continue
        # address perms offset dev inode [path]; the path may contain spaces.
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        path = parts[5].strip() if len(parts) > 5 else ""
        perms = parts[1]
        inode = int(parts[4])
        out.append(Mapping(int(lo, 16), int(hi, 16), perms, int(parts[2], 16), parts[3],
                           inode, path, classify(path, perms, inode)))
    return out


def read_raw(pid: int) -> bytes:
    """The maps file as bytes: callers that cache a parse key it on these."""
    with proc_errors(pid, "the memory map"):
        with open(f"/proc/{pid}/maps", "rb") as f:
            return f.read()


def read_maps(pid: int) -> list[Mapping]:
    return parse_maps(read_raw(pid))


def trackable(m: Mapping) -> bool:
    """Mappings whose pages can be tracked (see UNTRACKABLE_KINDS)."""
    return m.kind not in UNTRACKABLE_KINDS


def tracked_bounds(data: bytes, accessible_only: bool = False) -> list[tuple[int, int]]:
    """(start, end) of the trackable mappings of a maps file, in file order
    (ascending): :func:`parse_maps` + :func:`trackable` reduced to the
    bounds, for callers that read maps thousands of times (the system scan,
    the FUSE mount's first look at a request).  ``accessible_only`` also
    leaves out PROT_NONE mappings (guard pages, address-space reservations)."""
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        rng, perms, rest = line.split(b" ", 2)
        if accessible_only and perms[:3] == b"---":
            continue
        # Only a line ending in " [vdso]" etc. can be one; its path field
        # (the sixth, possibly with spaces) then tells it from a file so named.
        if rest.endswith(_UNTRACKABLE_ENDINGS):
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip() in _UNTRACKABLE_PATHS:
                continue
        lo, hi = rng.split(b"-")
        out.append((int(lo, 16), int(hi, 16)))
    return out
