"""Virtual machines as targets: a VMM process's guest RAM, by guest-physical address.

A guest's RAM is memory its VMM process (QEMU, Firecracker,
cloud-hypervisor, crosvm) maps; the guest's accesses are accesses to those
host pages.  Under hardware virtualisation they go through EPT/NPT, which
page_idle still sees: its rmap walk ends in mmu_notifier_clear_young(), and
KVM answers with the EPT/NPT accessed bits (docs/vms.md has the 6.1 code
path).  Under TCG they are plain loads and stores of the QEMU process.

This package finds the guest RAM mappings and the guest-physical ->
host-virtual map (:class:`GuestLayout`), and turns the VA-indexed results
of any backend into guest-physical terms (backends/guest.py wraps a backend
with it):

>>> layout = find_guest_ram(pid)                    # or qmp="/run/vm.qmp"
>>> bm = IdleBitmap(pid); bm.mark_idle(layout.hva_ranges()); ...
>>> gm = idle_map_to_gpa(bm.read(layout.hva_ranges()), layout)
>>> idle, present = gm.rfc_words(0, 1 << 30)        # bit i = guest frame i

How the layout is found, most exact first:

1. ``qmp``: QEMU itself says which backends exist (``query-memdev``),
   where each range of them sits in guest-physical memory (``info mtree
   -f``) and at which host address (``gpa2hva``).
2. QEMU's command line (``-m``, ``-object memory-backend-*``, ``-numa
   node,memdev=``, ``-machine memory-backend=,max-ram-below-4g=``), the
   x86 pc/q35 RAM split of QEMU 7.2 (:func:`x86_ram_split`), and the
   mapping of each backend found by its exact size and kind.
3. Other VMMs: the large anonymous or shared RAM mappings, their total size
   from the command line where it can be given there, the first at GPA 0
   and a second (above the 32-bit PCI hole) at 4 GiB.  Heuristic, and not
   tested here: no such VMM runs on our machines.

Modules, by concern:

- ``vmm``: which processes are VMMs, KVM or TCG;
- ``qemu``: QEMU's command line and QMP, the x86 RAM split;
- ``discover``: :func:`find_guest_ram`, the most exact of the three ways;
- ``layout``: :class:`GuestLayout` and guest-physical views of results.
"""
from __future__ import annotations

from .discover import find_guest_ram
from .layout import (FOUR_GIB, GuestLayout, GuestRamRegion, clip_regions, gpa_ranges_to_hva, guest_mapping,
                     guest_sample, hot_gpa_ranges, idle_map_to_gpa, layout_json, layout_summary, restrict)
from .qemu import QemuBackend, QemuConfig, parse_qemu_argv, parse_size, x86_ram_split
from .vmm import VMM_KINDS, VmmProcess, describe, executable, list_vmms, vmm_kind

__all__ = ["FOUR_GIB", "GuestLayout", "GuestRamRegion", "QemuBackend", "QemuConfig", "VMM_KINDS", "VmmProcess",
           "clip_regions", "describe", "executable", "find_guest_ram", "gpa_ranges_to_hva", "guest_mapping",
           "guest_sample", "hot_gpa_ranges", "idle_map_to_gpa", "layout_json", "layout_summary", "list_vmms",
           "parse_qemu_argv", "parse_size", "restrict", "vmm_kind", "x86_ram_split"]
