"""Pure parts of VM targets: QEMU's command line, the x86 RAM split, mapping
matching, QMP/HMP text (captured from QEMU 7.2), and GPA re-indexing."""
import numpy as np
import pytest

from idlemap.errors import BadInput
from idlemap.kernel.maps import PAGE_SIZE, Mapping, parse_maps
from idlemap.kernel.qmp import parse_gpa2hva, parse_mtree_flat
from idlemap.records import IdleMap, MappingUsage, Span, WssSample
from idlemap.vm import (FOUR_GIB, GuestLayout, GuestRamRegion, QemuBackend, clip_regions, gpa_ranges_to_hva,
                        guest_sample, hot_gpa_ranges, idle_map_to_gpa, parse_qemu_argv, parse_size, vmm_kind,
                        x86_ram_split)
from idlemap.vm.qemu import match_backends, qemu_gpa_plan, split_opts

MiB, GiB = 1 << 20, 1 << 30
P = PAGE_SIZE

# `info mtree -f` of `qemu-system-x86_64 -S -m 512 -nodefaults` (QEMU 7.2), cut.
MTREE = """\
FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000 KVM
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
"""

# /proc/PID/maps of QEMU 7.2 with a 128 MiB memfd backend and a 128 MiB
# shared memory-backend-ram, as QEMU made them (cut).
MAPS = """\
557c6d74b000-557c6e5d3000 rw-p 00000000 00:00 0                          [heap]
7ff2efc00000-7ff2f7c00000 rw-s 00000000 00:01 1073                       /dev/zero (deleted)
7ff2f7c00000-7ff2f7c01000 ---p 00000000 00:00 0
7ff2f7fff000-7ff2fffff000 rw-s 00000000 00:01 1072                       /memfd:memory-backend-memfd (deleted)
7ff300000000-7ff33ffff000 rwxp 00000000 00:00 0
7f9357e00000-7f9367e00000 rw-p 00000000 00:00 0
7f9367e00000-7f9367e01000 ---p 00000000 00:00 0
7f9368000000-7f9378000000 rw-p 00000000 00:00 0
"""


def test_parse_size_qemu_syntax():
    assert parse_size("512", "m") == 512 * MiB
    assert parse_size("1.5G") == 3 * GiB // 2
    assert parse_size("3584M") == 0xE0000000
    assert parse_size("0x1000") == 4096
    assert parse_size(4096) == 4096
    assert parse_size("2k") == 2048
    with pytest.raises(BadInput):
        parse_size("lots")


def test_split_opts_escaped_commas_and_flags():
    assert split_opts("memory-backend-file,id=m,size=1G,mem-path=/a,,b") == \
        ("memory-backend-file", {"id": "m", "size": "1G", "mem-path": "/a,b"})
    assert split_opts("type=q35,accel=kvm") == ("", {"type": "q35", "accel": "kvm"})
    assert split_opts("q35,usb") == ("q35", {"usb": "on"})


@pytest.mark.parametrize("machine,ram,limit,want", [
    # QEMU's own examples (hw/i386/pc_piix.c) and the thresholds around them
    ("pc", 4 * GiB, None, (3 * GiB, GiB)),
    ("pc-1.7", 4 * GiB, None, (3584 * MiB, 512 * MiB)),
    ("pc", 4 * GiB, 2 * GiB, (2 * GiB, 2 * GiB)),
    ("pc", 3968 * MiB, 4 * GiB, (3968 * MiB, 0)),
    ("pc", 3584 * MiB, None, (3 * GiB, 512 * MiB)),       # reaches 3.5 GiB: split at 3 GiB
    ("pc", 3583 * MiB, None, (3583 * MiB, 0)),            # just below: all of it below 4G
    ("pc-i440fx-7.2", 512 * MiB, None, (512 * MiB, 0)),
    ("q35", 2816 * MiB, None, (2 * GiB, 768 * MiB)),      # 0xb0000000: split at 2 GiB
    ("pc-q35-7.2", 2815 * MiB, None, (2815 * MiB, 0)),
    ("q35", 8 * GiB, None, (2 * GiB, 6 * GiB)),
    ("q35", 8 * GiB, GiB, (GiB, 7 * GiB)),
])
def test_x86_ram_split(machine, ram, limit, want):
    assert x86_ram_split(machine, ram, limit) == want


def test_qemu_argv_implicit_ram():
    cfg = parse_qemu_argv(["qemu-system-x86_64", "-nodefaults", "-m", "3G", "-M", "q35,accel=kvm",
                           "-name", "guest=web1,debug-threads=on", "disk.img"])
    assert cfg.machine == "q35" and cfg.ram_bytes == 3 * GiB and cfg.accel == "kvm"
    assert cfg.name == "web1" and cfg.ram_backend_ids == ["pc.ram"]
    assert qemu_gpa_plan(cfg) == [(0, 2 * GiB, "pc.ram", 0), (FOUR_GIB, GiB, "pc.ram", 2 * GiB)]
    # No -m: QEMU's default 128 MiB; -m size= form; -mem-path gives a file backend.
    assert parse_qemu_argv(["qemu-system-x86_64"]).ram_bytes == 128 * MiB
    cfg = parse_qemu_argv(["qemu", "-m", "size=1G,slots=2,maxmem=8G", "-mem-path", "/hugepages"])
    assert cfg.ram_bytes == GiB and cfg.backends[0].qom_type == "memory-backend-file"
    assert cfg.backends[0].options["mem-path"] == "/hugepages"


def test_qemu_argv_numa_memdevs_in_node_order_across_the_hole():
    argv = ["qemu-system-x86_64", "-m", "4G",
            "-object", '{"qom-type": "memory-backend-memfd", "id": "m1", "size": 2147483648}',
            "-object", "memory-backend-ram,id=m0,size=2G",
            "-numa", "node,nodeid=1,memdev=m1", "-numa", "node,nodeid=0,memdev=m0,cpus=0-1",
            "-numa", "dist,src=0,dst=1,val=20"]
    cfg = parse_qemu_argv(argv)
    assert cfg.ram_backend_ids == ["m0", "m1"] and cfg.ram_bytes == 4 * GiB
    # pc: 3 GiB below 4G: m0 whole, m1's first GiB below, its second at 4 GiB.
    assert qemu_gpa_plan(cfg) == [(0, 2 * GiB, "m0", 0), (2 * GiB, GiB, "m1", 0),
                                  (FOUR_GIB, GiB, "m1", GiB)]


def test_qemu_argv_machine_memory_backend():
    cfg = parse_qemu_argv(["qemu-system-x86_64", "-machine", "pc,memory-backend=ram0,max-ram-below-4g=1G",
                           "-object", "memory-backend-file,id=ram0,size=2G,mem-path=/dev/shm/g,share=on"])
    assert cfg.ram_backend_ids == ["ram0"] and cfg.max_ram_below_4g == GiB
    assert qemu_gpa_plan(cfg) == [(0, GiB, "ram0", 0), (FOUR_GIB, GiB, "ram0", GiB)]


def test_qemu_argv_errors_are_sentences():
    with pytest.raises(BadInput, match="never defines"):
        parse_qemu_argv(["qemu", "-numa", "node,memdev=nope"])
    with pytest.raises(BadInput, match="QMP"):
        qemu_gpa_plan(parse_qemu_argv(["qemu-system-aarch64"]), "aarch64")


def test_match_backends_by_size_and_kind():
    maps = parse_maps(MAPS)
    backends = [QemuBackend("mf", "memory-backend-memfd", 128 * MiB, {}),
                QemuBackend("mr", "memory-backend-ram", 128 * MiB, {"share": "on"})]
    found, notes = match_backends(backends, maps)
    assert found["mf"].start == 0x7ff2f7fff000 and found["mr"].start == 0x7ff2efc00000 and not notes
    # Two private 256 MiB mappings fit one private backend: the highest wins, with a note.
    found, notes = match_backends([QemuBackend("pc.ram", "memory-backend-ram", 256 * MiB, {})], maps)
    assert found["pc.ram"].start == 0x7f9368000000 and len(notes) == 1
    # The TCG code buffer (rwx) and the heap are never guest RAM.
    found, _ = match_backends([QemuBackend("x", "memory-backend-ram", 0x3ffff000, {})], maps)
    assert found == {}


def test_parse_mtree_flat_and_gpa2hva():
    ranges = parse_mtree_flat(MTREE)
    assert [(r.start, r.end, r.kind, r.region, r.offset) for r in ranges[:4]] == [
        (0, 0xC0000, "ram", "pc.ram", 0), (0xC0000, 0xE0000, "rom", "pc.rom", 0),
        (0xE0000, 0x100000, "rom", "pc.bios", 0x20000), (0x100000, 0x20000000, "ram", "pc.ram", 0x100000)]
    assert all(r.kind != "i/o" or r.region == "ioapic" for r in ranges)
    assert parse_mtree_flat(MTREE, "I/O")[0].region == "dma-chan"
    assert parse_gpa2hva("Host virtual address for 0x100000 (pc.ram) is 0x7f9357f00000\r\n") == 0x7f9357f00000
    assert parse_gpa2hva("No memory is mapped at address 0x20000000\r\n") is None


def test_vmm_kind():
    assert vmm_kind(["/usr/bin/qemu-system-x86_64", "-m", "1G"]) == ("qemu", "x86_64")
    assert vmm_kind([], comm="qemu-system-aar") == ("qemu", "")   # cut comm: no arch to trust
    assert vmm_kind(["x"], exe="/usr/bin/qemu-system-aarch64 (deleted)") == ("qemu", "aarch64")
    assert vmm_kind(["/opt/fc/firecracker", "--api-sock", "/s"]) == ("firecracker", "")
    assert vmm_kind(["cloud-hypervisor"]) == ("cloud-hypervisor", "")
    assert vmm_kind([], comm="cloud-hyperviso") == ("cloud-hypervisor", "")
    assert vmm_kind(["python3", "qemu-system-x86_64"]) is None


# -- GPA re-indexing ----------------------------------------------------------------

HVA_LOW, HVA_HIGH = 0x7F0000000000, 0x7F1000000000


def two_region_layout():
    # 1 MiB below 4G at HVA_LOW (backend a), 512 KiB at 4 GiB from HVA_HIGH (backend b).
    return GuestLayout(1, "qemu", (GuestRamRegion(0, MiB, HVA_LOW, "a"),
                                   GuestRamRegion(FOUR_GIB, MiB // 2, HVA_HIGH, "b")), "cmdline", "tcg")


def va_map(layout, accessed_pages_by_region, absent=()):
    """An IdleMap over the layout's HVA ranges plus one unrelated mapping in
    between; ``accessed_pages_by_region`` lists page indexes per region."""
    spans, present, idle = [], [], []
    off = 0
    other = Mapping(HVA_LOW + 2 * MiB, HVA_LOW + 2 * MiB + 16 * P, "rw-p", 0, "00:00", 0, "", "anon")
    items = [(layout.regions[0], accessed_pages_by_region[0]), (None, []),
             (layout.regions[1], accessed_pages_by_region[1])]
    for r, acc in items:
        if r is None:
            m, n = other, 16
        else:
            m = Mapping(r.hva_start, r.hva_end, "rw-p", 0, "00:00", 0, "", "anon")
            n = r.size_bytes // P
        spans.append(Span(m, m.start, m.end, off))
        p = np.ones(n, bool)
        i = np.ones(n, bool)
        i[list(acc)] = False
        present.append(p)
        idle.append(i)
        off += n
    present = np.concatenate(present)
    idle = np.concatenate(idle)
    for k in absent:
        present[k] = False
        idle[k] = False
    z = np.zeros(off, bool)
    return IdleMap(1, spans, present, idle, z.copy(), z.copy(), 10.0, 1.0)


def test_idle_map_to_gpa_indexes_by_guest_frame():
    layout = two_region_layout()
    m = va_map(layout, [[0, 5, 255], [1, 127]], absent=[7])
    g = idle_map_to_gpa(m, layout)
    assert [(s.start, s.end, s.offset, s.mapping.label) for s in g.spans] == [
        (0, MiB, 0, "guest:a"), (FOUR_GIB, FOUR_GIB + MiB // 2, 256, "guest:b")]
    assert g.npages == 256 + 128                  # the unrelated mapping is gone
    assert np.flatnonzero(g.accessed).tolist() == [0, 5, 255, 257, 383]
    assert not g.present[7]
    gfn = g.vpns()
    assert gfn[256] == FOUR_GIB // P and gfn[255] == 255
    assert hot_gpa_ranges(g) == [(0, P), (5 * P, 6 * P), (255 * P, 256 * P),
                                 (FOUR_GIB + P, FOUR_GIB + 2 * P), (FOUR_GIB + 127 * P, FOUR_GIB + 128 * P)]
    # The RFC layout over guest-physical addresses: bit i = guest frame i.
    idle, present = g.rfc_words(0, MiB, holes_idle=False)
    bits = np.unpackbits(idle.view(np.uint8), bitorder="little").astype(bool)
    assert not bits[0] and not bits[5] and bits[1] and not bits[7] and bits.size == 256
    idle_hi, _ = g.rfc_words(FOUR_GIB, FOUR_GIB + MiB // 2, holes_idle=False)
    bits_hi = np.unpackbits(idle_hi.view(np.uint8), bitorder="little").astype(bool)
    assert np.flatnonzero(~bits_hi).tolist() == [1, 127]


def test_gpa_ranges_to_hva_and_clipping():
    layout = two_region_layout()
    assert gpa_ranges_to_hva(layout, None) == [(HVA_LOW, HVA_LOW + MiB), (HVA_HIGH, HVA_HIGH + MiB // 2)]
    # A range across the MMIO hole keeps only the RAM on both sides.
    assert gpa_ranges_to_hva(layout, [(MiB - P, FOUR_GIB + P)]) == [
        (HVA_LOW + MiB - P, HVA_LOW + MiB), (HVA_HIGH, HVA_HIGH + P)]
    assert gpa_ranges_to_hva(layout, [(2 * MiB, 3 * MiB)]) == []
    assert layout.gpa_to_hva(FOUR_GIB + 3) == HVA_HIGH + 3 and layout.gpa_to_hva(2 * MiB) is None
    assert layout.hva_to_gpa(HVA_LOW + 5) == 5
    clipped = clip_regions(layout, [(P + 1, 2 * P)])
    assert clipped == [GuestRamRegion(P, P, HVA_LOW + P, "a")]
    g = idle_map_to_gpa(va_map(layout, [[1], []]), layout, [(P, 2 * P)])
    assert g.npages == 1 and g.accessed.tolist() == [True] and g.spans[0].start == P


def test_guest_sample_page_and_mapping_granular():
    layout = two_region_layout()
    s = WssSample(1, "page_idle", 10.0, 1.0, 0, -1, 0, idle_map=va_map(layout, [[0, 1], [2]]))
    g = guest_sample(s, layout, pss_bytes=123)
    assert g.rss_bytes == (256 + 128) * P and g.accessed_bytes == 3 * P and g.pss_bytes == 123
    assert sorted((u.mapping.label, u.accessed_bytes) for u in g.by_mapping) == [("guest:a", 2 * P),
                                                                                 ("guest:b", P)]
    # clear_refs-like: per host mapping; the unrelated mapping is dropped.
    rows = [MappingUsage(Mapping(HVA_LOW, HVA_LOW + MiB, "rw-p", 0, "00:00", 0, "", "anon"), MiB, MiB, 4096, 0),
            MappingUsage(Mapping(HVA_LOW + 2 * MiB, HVA_LOW + 3 * MiB, "rw-p", 0, "00:00", 0, "", "anon"),
                         MiB, MiB, MiB, 0)]
    g = guest_sample(WssSample(1, "clear_refs", 10.0, 1.0, 2 * MiB, 2 * MiB, MiB + 4096, by_mapping=rows),
                     layout)
    assert g.rss_bytes == MiB and g.accessed_bytes == 4096 and g.pss_bytes == MiB
    assert [(u.mapping.label, u.mapping.start, u.mapping.end) for u in g.by_mapping] == [("guest:a", 0, MiB)]
