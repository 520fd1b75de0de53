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


def parse_maps(text: str) -> list[Mapping]:
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


def read_maps(pid: int) -> list[Mapping]:
    with proc_errors(pid, "the memory map"):
        with open(f"/proc/{pid}/maps", "rb") as f:
            return parse_maps(f.read().decode("utf-8", "replace"))


def trackable(m: Mapping) -> bool:
    """Mappings whose pages can be tracked: vsyscall is not in the page tables
    of the process and vvar/vdso pages are kernel pages, never on an LRU list."""
    return m.kind not in ("vsyscall", "vvar", "vdso")
