"""A nested QEMU guest tracked from its VMM process, in the test VM.

Inside the test VM (Linux 6.1 with page_idle) we boot a second guest with
qemu-system-x86_64 under TCG: the same kernel (the ELF inside the bzImage,
for a faster boot) and a tiny initramfs whose
init (a static C program compiled here) maps HOT_MIB MiB, writes every page,
reads its own /proc/self/pagemap (it is PID 1, so root: frame numbers
visible) and prints the guest-physical frames it holds on the serial
console.  Then it waits; each "g" it reads from the console makes it write
every hot page once and answer "done".  The host side marks the VMM's
guest RAM idle, sends "g", waits for "done", reads: timing-free, so the
guest-physical hot set can be compared page for page with what init holds.

Under TCG the guest's accesses are the VMM's own loads and stores to its
RAM mapping, so page_idle sees them directly (under KVM it would see them
through mmu_notifier_clear_young, docs/vms.md).  The nested QEMU runs with
THP disabled (PR_SET_THP_DISABLE), so the host tracks guest RAM per 4 KiB
page, as the comparison needs.
"""
import ctypes
import json
import lzma
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque

import numpy as np
import pytest

from idlemap.backends.page_idle import PageIdleBackend
from idlemap.cli import main
from idlemap.testvm.stock import newc
from idlemap.kernel.maps import PAGE_SHIFT, PAGE_SIZE
from idlemap.kernel.page_idle import PATH as BITMAP_PATH
from idlemap.kernel.process import identify
from idlemap.testing.child import end
from idlemap.backends.guest import GuestBackend
from idlemap.vm import find_guest_ram, hot_gpa_ranges

from kvm_helpers import kvm_usable_reason

pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    not os.path.exists(BITMAP_PATH), reason="no page_idle: CONFIG_IDLE_PAGE_TRACKING is not set")]

MiB = 1 << 20
HOT_MIB = 64
GUEST_MIB = 256
BOOT_LIMIT_S = 1200          # a bound on waiting for the nested guest, not a measurement
PR_SET_THP_DISABLE = 41

INIT_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <termios.h>
#include <unistd.h>

#define NPAGES ((size_t)HOT_MIB * 256)

static void say(const char *fmt, ...)
{
    char b[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    write(1, b, n);
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The guest frames behind buf, sorted; 0 if one is not present. */
static int frames(volatile unsigned char *buf, uint64_t *out)
{
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0)
        return 0;
    off_t off = (off_t)((uintptr_t)buf / 4096) * 8;
    ssize_t n = pread(fd, out, NPAGES * 8, off);
    close(fd);
    if (n != (ssize_t)(NPAGES * 8))
        return 0;
    for (size_t i = 0; i < NPAGES; i++) {
        if (!(out[i] >> 63))
            return 0;
        out[i] &= (1ULL << 55) - 1;
    }
    qsort(out, NPAGES, 8, cmp);
    return 1;
}

int main(void)
{
    static uint64_t pfn[NPAGES], again[NPAGES];
    struct termios t;

    mount("proc", "/proc", "proc", 0, NULL);
    /* byte-at-a-time console input, no echo */
    if (tcgetattr(0, &t) == 0) {
        t.c_lflag &= ~(ECHO | ICANON);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        tcsetattr(0, TCSANOW, &t);
    }
    volatile unsigned char *buf = mmap(NULL, NPAGES * 4096, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        say("IDLEMAP error mmap\n");
        for (;;) pause();
    }
    for (size_t i = 0; i < NPAGES; i++)
        buf[i * 4096] = 1;
    mlock((void *)buf, NPAGES * 4096);
    if (!frames(buf, pfn)) {
        say("IDLEMAP error pagemap\n");
        for (;;) pause();
    }
    for (size_t i = 0; i < NPAGES;) {
        size_t j = i + 1;
        while (j < NPAGES && pfn[j] == pfn[j - 1] + 1)
            j++;
        say("IDLEMAP hot %llx %zu\n", (unsigned long long)pfn[i], j - i);
        i = j;
    }
    say("IDLEMAP ready %zu\n", (size_t)NPAGES);
    for (unsigned long seq = 1;; ) {
        char c;
        if (read(0, &c, 1) != 1)
            continue;
        if (c == 'g') {                 /* one write to every hot page */
            for (size_t i = 0; i < NPAGES; i++)
                buf[i * 4096]++;
            say("IDLEMAP done %lu\n", seq++);
        } else if (c == 'l') {          /* write every hot page, over and over, until the next byte */
            int fl = fcntl(0, F_GETFL);
            unsigned long passes = 0;
            fcntl(0, F_SETFL, fl | O_NONBLOCK);
            say("IDLEMAP looping\n");
            while (read(0, &c, 1) != 1) {
                for (size_t i = 0; i < NPAGES; i++)
                    buf[i * 4096]++;
                passes++;
            }
            fcntl(0, F_SETFL, fl);
            say("IDLEMAP stopped %lu\n", passes);
        } else if (c == 'v') {          /* have the frames moved since? */
            say("IDLEMAP same %d\n", frames(buf, again) && !memcmp(pfn, again, sizeof pfn));
        }
    }
}
"""


def build_initramfs(d):
    src = d / "init.c"
    src.write_text(INIT_C)
    exe = d / "init"
    subprocess.run(["cc", "-static", "-O2", f"-DHOT_MIB={HOT_MIB}", "-o", str(exe), str(src)], check=True)
    cpio = d / "initramfs.cpio"
    cpio.write_bytes(newc([("dev", 0o040755, b"", (0, 0)), ("proc", 0o040755, b"", (0, 0)),
                           ("dev/console", 0o020600, b"", (5, 1)), ("init", 0o100755, exe.read_bytes(), (0, 0))]))
    return cpio


def vmlinux_from(bzimage, d):
    """The ELF kernel inside a bzImage (the same kernel: its compressed
    payload).  QEMU boots it through the PVH entry (CONFIG_PVH), which skips
    the real-mode setup and the in-guest xz decompression: measured on the
    host, boot to init in 8.3 s instead of 15.8 s under TCG, so about half
    the nested boot."""
    raw = open(bzimage, "rb").read()
    at = raw.find(b"\xfd7zXZ\x00")
    if at < 0:
        return bzimage                 # not xz (CONFIG_KERNEL_XZ): boot it as it is
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(raw[at:])
    if elf[:4] != b"\x7fELF":
        return bzimage
    out = d / "vmlinux"
    out.write_bytes(elf)
    return str(out)


def _no_thp():
    # Inherited through exec: the nested QEMU's guest RAM stays in 4 KiB pages.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)


class NestedGuest:
    def __init__(self, d, accel="tcg"):
        from idlemap.testvm import kernel_image
        self.t0 = time.monotonic()
        cpio = build_initramfs(d)
        kernel = vmlinux_from(kernel_image(build=False), d)
        self.build_s = time.monotonic() - self.t0
        self.qmp = str(d / "qmp.sock")
        accel_args = ["-accel", "tcg,tb-size=64"] if accel == "tcg" else ["-accel", "kvm", "-cpu", "host"]
        argv = ["qemu-system-x86_64", *accel_args, "-m", str(GUEST_MIB), "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", kernel, "-initrd", str(cpio),
                "-append", "console=ttyS0 quiet loglevel=1 panic=-1 i8042.noaux i8042.nokbd "
                           "transparent_hugepage=never",
                "-serial", "stdio", "-qmp", f"unix:{self.qmp},server=on,wait=off",
                # Renamed, as many deployments do: its comm is no VMM's name,
                # so finding it takes the executable (top --vms) or argv.
                "-name", "nested,process=nested-vm"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=_no_thp)
        self.pid = self.proc.pid
        self.lines: queue.Queue = queue.Queue()
        self.log: deque = deque(maxlen=40)
        threading.Thread(target=self._reader, daemon=True).start()
        self.hot_runs = []
        while True:
            words = self.expect("hot", "ready", timeout_s=BOOT_LIMIT_S)
            if words[0] == "ready":
                self.hot_pages = int(words[1])
                break
            self.hot_runs.append((int(words[1], 16), int(words[2])))
        self.boot_s = time.monotonic() - self.t0 - self.build_s

    def _reader(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip("\r\n")
            self.log.append(line)
            at = line.find("IDLEMAP ")
            if at >= 0:
                self.lines.put(line[at + 8:].split())
        self.lines.put(["eof"])

    def expect(self, *words, timeout_s=600):
        try:
            got = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError("nested guest silent; console:\n" + "\n".join(self.log)) from None
        assert got[0] in words, f"nested guest said {got}; console:\n" + "\n".join(self.log)
        return got

    def send(self, c):
        self.proc.stdin.write(c.encode())
        self.proc.stdin.flush()

    def touch_hot(self):
        """The guest writes every hot page once; returns when it has."""
        self.send("g")
        self.expect("done")

    def frames_unchanged(self):
        self.send("v")
        return self.expect("same")[1] == "1"

    def stop(self):
        end(self.proc)


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    for tool in ("cc", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} in the test VM")
    g = NestedGuest(tmp_path_factory.mktemp("nested"))
    print(f"\nnested guest: init built in {g.build_s:.1f} s, booted to init in {g.boot_s:.1f} s; "
          f"{g.hot_pages} hot pages in {len(g.hot_runs)} guest-physical runs")
    yield g
    g.stop()


def hot_mask(gm, runs):
    """Flat-array mask of a GPA-indexed IdleMap for the guest frames in runs."""
    gfns = gm.vpns()
    want = np.zeros(gfns.size, bool)
    for start, n in runs:
        lo, hi = np.searchsorted(gfns, [start, start + n])
        assert hi - lo == n, "a hot frame is outside the guest RAM we found"
        want[lo:hi] = True
    return want


def test_guest_hot_set_seen_from_the_vmm(guest):
    hot_set_seen_from_the_vmm(guest, "tcg")


def hot_set_seen_from_the_vmm(guest, accel):
    proc = identify(guest.pid)
    layout = find_guest_ram(guest.pid)
    exact = find_guest_ram(guest.pid, qmp=guest.qmp)
    for r in exact.regions:           # the command line and QEMU itself agree
        assert layout.gpa_to_hva(r.gpa_start) == r.hva_start
    assert layout.ram_bytes == GUEST_MIB * MiB and layout.accel == accel
    hot_bytes = guest.hot_pages * PAGE_SIZE
    assert hot_bytes == HOT_MIB * MiB

    # TLB: page_idle clears accessed bits without a flush, and the outer TCG
    # caches translations of the VMM's RAM, so flush after marking (docs/tlb.md).
    be = GuestBackend(PageIdleBackend, proc, layout, tlb_flush="soft-dirty")
    with be:
        # 1. The guest writes every hot page once inside the window.
        be.mark()
        guest.touch_hot()
        hot = be.sample(remark=False)
        # 2. The guest stays idle for a whole window.
        be.mark()                       # nothing asked: init stays blocked in read()
        idle = be.sample(remark=False)
    gm = hot.idle_map
    want = hot_mask(gm, guest.hot_runs)
    acc = gm.accessed
    missed = int(np.count_nonzero(want & ~acc))
    extra = int(np.count_nonzero(acc & ~want))
    print(f"\n{accel} guest WSS {hot.accessed_bytes / MiB:.2f} MiB for {HOT_MIB} MiB hot "
          f"(missed {missed} pages, {extra * PAGE_SIZE / 1024:.0f} KiB else: the guest kernel); "
          f"idle window: {idle.accessed_bytes / 1024:.0f} KiB accessed; guest RSS {hot.rss_bytes / MiB:.1f} MiB")
    assert abs(hot.accessed_bytes - hot_bytes) <= 0.05 * hot_bytes
    assert missed == 0
    assert extra * PAGE_SIZE <= 0.05 * hot_bytes
    # The guest-physical hot ranges contain every run init holds.
    ranges = hot_gpa_ranges(gm)
    for start, n in guest.hot_runs:
        lo, hi = start << PAGE_SHIFT, (start + n) << PAGE_SHIFT
        assert any(a <= lo and hi <= b for a, b in ranges), hex(lo)
    # In the idle window none of init's pages was accessed, all stayed present.
    im = idle.idle_map
    assert not (im.accessed & want).any() and im.present[want].all()
    assert idle.accessed_bytes <= 0.05 * hot_bytes
    assert guest.frames_unchanged()


def test_bitmap_cli_by_guest_frame(guest, tmp_path, capsys):
    out = tmp_path / "guest.bin"
    rc = main(["bitmap", "--vm", str(guest.pid), "--wait", "0", "-o", str(out), "--json"])
    assert rc == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["address_space"] == "guest-physical" and meta["layout"]["ram_bytes"] == GUEST_MIB * MiB
    idle = np.unpackbits(np.frombuffer(out.read_bytes(), np.uint8), bitorder="little")
    present = np.unpackbits(np.frombuffer((tmp_path / "guest.bin.present").read_bytes(), np.uint8),
                            bitorder="little")
    # Bit i is guest frame i: init's frames are present, and idle (init is blocked in read()).
    for start, n in guest.hot_runs:
        assert present[start:start + n].all() and idle[start:start + n].all()
    assert present.size <= GUEST_MIB * MiB // PAGE_SIZE       # nothing beyond guest RAM


def test_wss_default_reads_a_guest_hot_loop(guest, capsys):
    """A guest whose hot set is written continuously (never pausing, so the
    VMM's translations of it stay in the TLB): the default wss --vm must
    see all of it in every window (it read 1.3 MiB of 48 MiB unflushed)."""
    guest_hot_loop(guest, capsys, "tcg")


def guest_hot_loop(guest, capsys, accel):
    t0 = time.monotonic()
    guest.touch_hot()
    one_pass_s = time.monotonic() - t0          # the window must hold whole passes
    window = max(0.5, 4 * one_pass_s)
    guest.send("l")
    guest.expect("looping")
    try:
        rc = main(["wss", "--vm", str(guest.pid), f"{window:.2f}", "3", "--json"])
        flushed = [json.loads(x) for x in capsys.readouterr().out.splitlines()][:-1]
        rc_none = main(["wss", "--vm", str(guest.pid), f"{window:.2f}", "3", "--json", "--tlb-flush", "none"])
        unflushed = [json.loads(x) for x in capsys.readouterr().out.splitlines()][:-1]
    finally:
        guest.send("s")
        passes = int(guest.expect("stopped")[1])
    mib = [r["wss_bytes"] / MiB for r in flushed]
    print(f"\n{accel} guest hot loop ({HOT_MIB} MiB, {passes} passes, windows of {window:.2f} s): default "
          f"{mib} MiB; unflushed {[r['wss_bytes'] / MiB for r in unflushed]} MiB")
    assert rc == 0 and rc_none == 0 and passes >= 3
    assert all(r["tlb_exact"] for r in flushed) and not any(r["tlb_exact"] for r in unflushed)
    # All of the hot set in every window; above it only the guest kernel's
    # own few pages (the other tests allow 5% for those).
    assert all(HOT_MIB * 0.99 <= v <= HOT_MIB * 1.05 for v in mib), mib


def test_wss_cli_in_guest_terms(guest, capsys):
    rc = main(["wss", "--vm", str(guest.pid), "0.2", "1", "--json", "--by-mapping"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["address_space"] == "guest-physical" and row["backend"] == "page_idle"
    assert HOT_MIB * MiB <= row["rss_bytes"] <= GUEST_MIB * MiB
    assert [m["label"] for m in row["by_mapping"]] == ["guest:pc.ram"]
    assert row["by_mapping"][0]["start"] == "0x0"


def test_record_and_reports_in_guest_terms(guest, tmp_path, capsys):
    """Rounds of a guest go to a record file in guest-physical terms: the
    hot report of the round where init wrote its pages lists init's
    guest-physical runs, the idle round lists none of them."""
    from idlemap.formats.record import RecordWriter, make_meta, open_record
    from idlemap.scan import Scanner
    proc = identify(guest.pid)
    layout = find_guest_ram(guest.pid, qmp=guest.qmp)
    path = tmp_path / "guest.rec"
    sc = Scanner(proc, backend="page_idle", tlb_flush="soft-dirty", guest=layout)
    with sc, RecordWriter(str(path), make_meta(proc, sc.backend_name, sc.granularity, 0.0, 2,
                                               sc.tlb_flush, guest=layout)) as wr:
        sc.start()
        guest.touch_hot()
        wr.add(sc.round())              # round 0: init wrote every hot page
        wr.add(sc.round())              # round 1: the guest stayed idle
    rec = open_record(path)
    assert len(rec) == 2 and rec.meta.extra["address_space"] == "guest-physical"
    assert rec.meta.extra["guest"]["ram_bytes"] == GUEST_MIB * MiB
    capsys.readouterr()

    def hot(rounds):
        assert main(["report", str(path), "hot", "--rounds", rounds, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    got = [(int(r["start"], 16), int(r["end"], 16), r["mapping"]) for r in hot("0:1")["ranges"]]
    for start, n in guest.hot_runs:
        lo, hi = start << PAGE_SHIFT, (start + n) << PAGE_SHIFT
        assert any(a <= lo and hi <= b and label == "guest:pc.ram" for a, b, label in got), hex(lo)
    assert all(b <= GUEST_MIB * MiB for _, b, _ in got)       # guest-physical, not host VAs
    idle = [(int(r["start"], 16), int(r["end"], 16)) for r in hot("1:2")["ranges"]]
    for start, n in guest.hot_runs:
        lo, hi = start << PAGE_SHIFT, (start + n) << PAGE_SHIFT
        assert not any(a < hi and lo < b for a, b in idle)
    assert main(["report", str(path), "info"]) == 0
    assert "addresses are guest-physical" in capsys.readouterr().out


def test_hot_cli_takes_vm(guest, capsys):
    capsys.readouterr()
    assert main(["hot", "--vm", str(guest.pid), "-n", "1", "-i", "0.2", "--cold", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    # init is blocked in read(): its pages are resident and idle -> cold
    assert {r["mapping"] for r in d["ranges"]} == {"guest:pc.ram"}
    assert all(int(r["end"], 16) <= GUEST_MIB * MiB for r in d["ranges"])


def test_top_and_exporter_have_a_row_per_guest(guest):
    """The system-wide pass (top, exporter) with --vms: the VMM's guest RAM
    gets its own row, measured in the same global mark and read."""
    from idlemap.backends.system import PageIdleSystemScanner, Selection
    from idlemap.services.exporter import ExporterState, make_collector
    with open(f"/proc/{guest.pid}/comm") as f:
        assert f.read().strip() == "nested-vm"         # found by its executable, not its name
    sc = PageIdleSystemScanner(Selection(pids=frozenset({guest.pid})), guests=True, tlb_flush="soft-dirty")
    with sc:
        sc.mark()
        guest.touch_hot()
        s = sc.sample(remark=False)
    assert [g.pid for g in s.guests] == [guest.pid]
    g = s.guests[0]
    print(f"\nsystem pass: guest WSS {g.wss_bytes / MiB:.2f} MiB of {g.rss_bytes / MiB:.1f} MiB resident; "
          f"VMM process WSS {s.processes[0].wss_bytes / MiB:.2f} MiB")
    assert g.vmm == "qemu" and g.ram_bytes == GUEST_MIB * MiB
    assert abs(g.wss_bytes - HOT_MIB * MiB) <= 0.05 * HOT_MIB * MiB
    assert s.processes[0].wss_bytes >= g.wss_bytes        # the VMM's row holds the guest and QEMU itself
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest
    st = ExporterState("page_idle", "page", "1s")
    st.record(s)
    reg = CollectorRegistry()
    reg.register(make_collector(st, guests=True))
    lines = generate_latest(reg).decode().splitlines()
    wss = [ln for ln in lines if ln.startswith("idlemap_guest_wss_bytes{") and f'pid="{guest.pid}"' in ln]
    assert len(wss) == 1 and 'vmm="qemu"' in wss[0] and float(wss[0].split()[-1]) == g.wss_bytes
    ram = [ln for ln in lines if ln.startswith("idlemap_guest_ram_bytes{")]
    assert len(ram) == 1 and float(ram[0].split()[-1]) == GUEST_MIB * MiB


def test_vmm_exits_mid_scan_clean_stop(guest):
    """Last: kills the nested guest while `idlemap wss --vm` is scanning it."""
    wss = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", "--vm", str(guest.pid), "0.1", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(wss.stdout.readline())
        assert first["backend"] == "page_idle" and first["address_space"] == "guest-physical"
        os.kill(guest.pid, signal.SIGKILL)
        guest.proc.wait()
        out, err = wss.communicate(timeout=300)
    finally:
        end(wss)
    assert wss.returncode == 1 and err.strip() == f"idlemap: process {guest.pid} exited during the scan", err
    assert json.loads(out.splitlines()[-1])["schema"] == "idlemap.wss.summary/2"


# -- the same guest under KVM ---------------------------------------------------
# The test kernel has CONFIG_KVM_AMD and QEMU's TCG offers SVM to the test VM,
# so the nested QEMU can run its guest under KVM: the guest's stores then go
# through KVM's nested page tables, and only a backend that asks KVM (page_idle,
# through the MMU-notifier young hooks) sees them.


@pytest.fixture(scope="module")
def kvm_nested(tmp_path_factory):
    why = kvm_usable_reason()
    if why is not None:
        pytest.skip(why)
    g = NestedGuest(tmp_path_factory.mktemp("nested-kvm"), accel="kvm")
    print(f"\nnested KVM guest: booted to init in {g.boot_s:.1f} s; "
          f"{g.hot_pages} hot pages in {len(g.hot_runs)} guest-physical runs")
    yield g
    g.stop()


def test_kvm_guest_hot_set_seen_from_the_vmm(kvm_nested):
    hot_set_seen_from_the_vmm(kvm_nested, "kvm")


def test_wss_vm_of_a_kvm_guest_keeps_page_idle_and_refuses_kmod(kmod_loaded, kvm_nested, capsys):
    """With the module loaded, `wss --vm` of a KVM guest takes page_idle
    under auto, and `--backend kmod` is refused in one sentence: the module
    reads the guest's accesses as idle (test_kvm_guest_vm.py measures it)."""
    capsys.readouterr()
    assert main(["wss", "--vm", str(kvm_nested.pid), "0.2", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["backend"] == "page_idle" and row["address_space"] == "guest-physical"
    assert main(["wss", "--vm", str(kvm_nested.pid), "0.2", "1", "--backend", "kmod"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot see a KVM guest's accesses" in err and "\n" not in err, err


def test_wss_default_reads_a_kvm_guest_hot_loop(kvm_nested, capsys):
    """As for the TCG guest: the default (page_idle, then clear_refs 4, which
    makes KVM drop its nested mappings, docs/vms.md) sees the whole hot set
    in every window of a guest that never pauses."""
    guest_hot_loop(kvm_nested, capsys, "kvm")
