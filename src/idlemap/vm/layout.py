"""A guest's RAM layout (guest-physical -> host-virtual) and guest-physical
views of the VA-indexed results of any backend."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..analysis.spans import merge_ranges
from ..analysis.usage import idle_map_usage
from ..errors import UsageError
from ..kernel.maps import PAGE_SHIFT, Mapping
from ..records import IdleMap, MappingUsage, Span, WssSample

MiB, GiB = 1 << 20, 1 << 30
FOUR_GIB = 4 * GiB


__all__ = ["GuestRamRegion", "GuestLayout", "gpa_ranges_to_hva", "clip_regions", "restrict",
           "idle_map_to_gpa", "guest_sample", "layout_summary", "layout_json", "hot_gpa_ranges"]


# -- records -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GuestRamRegion:
    """A run of guest RAM contiguous in both address spaces."""
    gpa_start: int           # first guest-physical byte
    size_bytes: int
    hva_start: int           # where the VMM maps gpa_start
    backend_name: str        # QEMU backend id (pc.ram, mem0...), or the VMM's own label

    @property
    def gpa_end(self) -> int:
        return self.gpa_start + self.size_bytes

    @property
    def hva_end(self) -> int:
        return self.hva_start + self.size_bytes


@dataclass(frozen=True, slots=True)
class GuestLayout:
    """A guest's RAM: guest-physical ranges and where the VMM maps them."""
    pid: int
    vmm: str                             # one of VMM_KINDS
    regions: tuple[GuestRamRegion, ...]  # in guest-physical order
    source: str                          # "qmp", "cmdline" or "mappings" (heuristic)
    accel: str                           # "kvm", "tcg" or "unknown"
    machine: str = ""                    # QEMU machine type, "" elsewhere
    name: str = ""                       # guest name (QEMU -name), "" if none
    notes: tuple[str, ...] = ()          # caveats a user should read

    @property
    def ram_bytes(self) -> int:
        return sum(r.size_bytes for r in self.regions)

    def hva_ranges(self) -> list[tuple[int, int]]:
        """Host VA ranges of all guest RAM, sorted and merged."""
        return merge_ranges((r.hva_start, r.hva_end) for r in self.regions)

    def gpa_to_hva(self, gpa: int) -> int | None:
        for r in self.regions:
            if r.gpa_start <= gpa < r.gpa_end:
                return r.hva_start + gpa - r.gpa_start
        return None

    def hva_to_gpa(self, hva: int) -> int | None:
        for r in self.regions:
            if r.hva_start <= hva < r.hva_end:
                return r.gpa_start + hva - r.hva_start
        return None


# -- guest-physical views of VA-indexed results --------------------------------

def gpa_ranges_to_hva(layout: GuestLayout, ranges: Iterable[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Host VA ranges that back guest-physical ``ranges`` (None: all guest RAM).
    Parts of ``ranges`` that are not guest RAM (MMIO holes) are dropped."""
    if ranges is None:
        return layout.hva_ranges()
    out = []
    for lo, hi in ranges:
        for r in layout.regions:
            a, b = max(lo, r.gpa_start), min(hi, r.gpa_end)
            if a < b:
                out.append((r.hva_start + a - r.gpa_start, r.hva_start + b - r.gpa_start))
    return merge_ranges(out)


def clip_regions(layout: GuestLayout, ranges: Iterable[tuple[int, int]] | None) -> list[GuestRamRegion]:
    """The layout's regions cut to guest-physical ``ranges`` (page-aligned
    outwards), in GPA order; None: all of them."""
    regions = sorted(layout.regions, key=lambda r: r.gpa_start)
    if ranges is None:
        return regions
    out = []
    page = 1 << PAGE_SHIFT
    for r in regions:
        for lo, hi in merge_ranges((lo & ~(page - 1), (hi + page - 1) & ~(page - 1)) for lo, hi in ranges):
            a, b = max(lo, r.gpa_start), min(hi, r.gpa_end)
            if a < b:
                out.append(GuestRamRegion(a, b - a, r.hva_start + a - r.gpa_start, r.backend_name))
    return out


def restrict(layout: GuestLayout, gpa_ranges: Iterable[tuple[int, int]] | None) -> GuestLayout:
    """The same guest with only the RAM inside ``gpa_ranges`` (None: all):
    what a scan limited to guest-physical ranges walks."""
    if gpa_ranges is None:
        return layout
    regions = tuple(clip_regions(layout, gpa_ranges))
    if not regions:
        raise UsageError("the given range(s) hold no guest RAM (`idlemap vms PID` shows where it is)")
    return dataclasses.replace(layout, regions=regions)


def guest_mapping(r: GuestRamRegion) -> Mapping:
    """A stand-in Mapping for one guest RAM region, in guest-physical terms:
    start/end are GPAs, and reports label it ``guest:<backend>``."""
    return Mapping(r.gpa_start, r.gpa_end, "rw-p", 0, "00:00", 0, f"guest:{r.backend_name}", "guest")


def idle_map_to_gpa(m: IdleMap, layout: GuestLayout,
                    gpa_ranges: Iterable[tuple[int, int]] | None = None) -> IdleMap:
    """Re-index a VA-indexed IdleMap of the VMM by guest-physical address.

    The result is an ordinary IdleMap whose spans are guest RAM regions in
    GPA order (``span.start``/``end`` are guest-physical, ``vpns()`` gives
    guest frame numbers, ``rfc_words(lo, hi)`` is the RFC bitmap with bit i
    = guest frame lo/4K + i).  Guest pages the map did not cover read as
    holes (not present).  ``gpa_ranges`` limits the result to those
    guest-physical ranges (default: all guest RAM).
    """
    regions = clip_regions(layout, gpa_ranges)
    n = sum(r.size_bytes >> PAGE_SHIFT for r in regions)
    present = np.zeros(n, dtype=bool)
    idle = np.zeros(n, dtype=bool)
    huge = np.zeros(n, dtype=bool)
    swapped = np.zeros(n, dtype=bool)
    spans = []
    off = 0
    for r in regions:
        spans.append(Span(guest_mapping(r), r.gpa_start, r.gpa_end, off))
        for s in m.spans:
            lo, hi = max(s.start, r.hva_start), min(s.end, r.hva_end)
            if lo >= hi:
                continue
            src = slice(s.offset + ((lo - s.start) >> PAGE_SHIFT), s.offset + ((hi - s.start) >> PAGE_SHIFT))
            d0 = off + ((lo - r.hva_start) >> PAGE_SHIFT)
            dst = slice(d0, d0 + ((hi - lo) >> PAGE_SHIFT))
            present[dst] = m.present[src]
            idle[dst] = m.idle[src]
            huge[dst] = m.huge[src]
            swapped[dst] = m.swapped[src]
        off += r.size_bytes >> PAGE_SHIFT
    return IdleMap(m.pid, spans, present, idle, huge, swapped, m.time_s, m.window_s)


def guest_sample(s: WssSample, layout: GuestLayout, pss_bytes: int | None = None) -> WssSample:
    """A VMM's WssSample restricted to guest RAM and told in guest terms.

    Page-granular samples (with an idle_map) become per-region totals over
    a GPA-indexed map; mapping-granular ones (clear_refs) keep the VMM's
    per-mapping totals, one row per guest RAM mapping, labelled by backend.
    """
    if s.idle_map is not None:
        gm = idle_map_to_gpa(s.idle_map, layout)
        by_map = idle_map_usage(gm)
        rss = int(np.count_nonzero(gm.present)) << PAGE_SHIFT
        acc = int(np.count_nonzero(gm.accessed)) << PAGE_SHIFT
        return WssSample(pid=s.pid, backend=s.backend, time_s=s.time_s, window_s=s.window_s,
                         rss_bytes=rss, pss_bytes=-1 if pss_bytes is None else pss_bytes,
                         accessed_bytes=acc, by_mapping=by_map, idle_map=gm, scan_s=s.scan_s)
    rows = []
    for u in s.by_mapping:
        inside = [r for r in layout.regions if r.hva_start < u.mapping.end and u.mapping.start < r.hva_end]
        if not inside:
            continue
        gm = Mapping(min(r.gpa_start for r in inside), max(r.gpa_end for r in inside), u.mapping.perms, 0,
                     "00:00", 0, "guest:" + "+".join(sorted({r.backend_name for r in inside})), "guest")
        rows.append(MappingUsage(gm, u.rss_bytes, u.pss_bytes, u.accessed_bytes, u.idle_bytes, u.swap_bytes))
    return WssSample(pid=s.pid, backend=s.backend, time_s=s.time_s, window_s=s.window_s,
                     rss_bytes=sum(u.rss_bytes for u in rows),
                     pss_bytes=sum(u.pss_bytes for u in rows) if all(u.pss_bytes >= 0 for u in rows) else -1,
                     accessed_bytes=sum(u.accessed_bytes for u in rows), by_mapping=rows,
                     idle_map=None, scan_s=s.scan_s)


def layout_summary(layout: GuestLayout) -> str:
    """One sentence for headers: what the guest is and where its RAM is from."""
    how = {"qmp": "from QMP", "cmdline": "from the command line",
           "mappings": "recognised by mapping size"}[layout.source]
    what = f"{layout.vmm}" + (f" {layout.machine}" if layout.machine else "")
    name = f" guest {layout.name!r}" if layout.name else ""
    return (f"{what}{name}, {layout.accel}: {layout.ram_bytes / MiB:.0f} MiB guest RAM in "
            f"{len(layout.regions)} region{'s' * (len(layout.regions) != 1)} ({how})")


def layout_json(layout: GuestLayout) -> dict:
    return {"pid": layout.pid, "vmm": layout.vmm, "source": layout.source, "accel": layout.accel,
            "machine": layout.machine, "name": layout.name, "ram_bytes": layout.ram_bytes,
            "regions": [{"gpa_start": f"{r.gpa_start:#x}", "gpa_end": f"{r.gpa_end:#x}",
                         "size_bytes": r.size_bytes, "hva_start": f"{r.hva_start:#x}",
                         "backend": r.backend_name} for r in layout.regions],
            "notes": list(layout.notes)}


def hot_gpa_ranges(gm: IdleMap) -> list[tuple[int, int]]:
    """Guest-physical [start, end) runs of accessed pages of a GPA-indexed map."""
    out = []
    acc = gm.accessed
    for s in gm.spans:
        a = acc[gm.span_slice(s)].astype(np.int8)
        if not a.any():
            continue
        edges = np.flatnonzero(np.diff(np.concatenate(([0], a, [0]))))
        for lo, hi in zip(edges[::2], edges[1::2]):
            out.append((s.start + (int(lo) << PAGE_SHIFT), s.start + (int(hi) << PAGE_SHIFT)))
    return out
