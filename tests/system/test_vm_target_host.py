"""VM targets on the host kernel, with real (paused) QEMU processes.

A QEMU started with -S maps its guest RAM at once and runs no guest code,
so no guest kernel is needed to check where the RAM is: the layout read
from the command line must agree with what QEMU itself says over QMP
(query-memdev, info mtree -f, gpa2hva), for pc and q35, both sides of
their RAM-split thresholds, NUMA memdevs, and each backend type.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from idlemap.backends.guest import GuestBackend
from idlemap.errors import BadInput, UsageError
from idlemap.kernel.process import identify
from idlemap.testing.child import end
from idlemap.vm import FOUR_GIB, describe, find_guest_ram, list_vmms

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
MiB, GiB = 1 << 20, 1 << 30
LEGACY_ROM = (0xC0000, 0x100000)     # BIOS/option ROM window: QEMU shows pc.rom/pc.bios there at reset


class PausedQemu:
    """qemu-system-x86_64 -S with a QMP socket; our child, killed at exit."""

    def __init__(self, tmp_path, *args, accel="tcg"):
        self.qmp = str(tmp_path / f"qmp-{len(os.listdir(tmp_path))}.sock")
        argv = ["qemu-system-x86_64", "-S", "-nodefaults", "-no-user-config", "-display", "none",
                "-accel", accel, "-qmp", f"unix:{self.qmp},server=on,wait=off", *args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        # Ready when the QMP socket accepts; a bound, not a measured time.
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited: {self.proc.stderr.read()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.qmp)
                # QMP serves one client at a time: wait for QEMU to see ours go.
                time.sleep(0.05)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        end(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def same_translation(cmd, qmp):
    """Every range QEMU reports maps the same way in the command-line layout,
    and the command-line layout holds no RAM QEMU does not report (apart
    from the legacy ROM window, which is RAM again once the BIOS says so)."""
    for r in qmp.regions:
        for gpa in (r.gpa_start, r.gpa_end - 1):
            assert cmd.gpa_to_hva(gpa) == r.hva_start + gpa - r.gpa_start, (hex(gpa), cmd, qmp)
        assert any(c.backend_name == r.backend_name and c.gpa_start <= r.gpa_start and r.gpa_end <= c.gpa_end
                   for c in cmd.regions)
    covered = sum(r.size_bytes for r in qmp.regions)
    rom = LEGACY_ROM[1] - LEGACY_ROM[0]
    assert cmd.ram_bytes - covered in (0, rom)


CONFIGS = {
    "pc-512M": (["-m", "512"], [(0, 512 * MiB)]),
    "pc-3583M-all-below": (["-m", "3583M"], [(0, 3583 * MiB)]),
    "pc-3584M-split-3G": (["-m", "3584M"], [(0, 3 * GiB), (FOUR_GIB, 512 * MiB)]),
    "pc-max-below-1G": (["-M", "pc,max-ram-below-4g=1G", "-m", "2G"], [(0, GiB), (FOUR_GIB, GiB)]),
    "q35-2815M-all-below": (["-M", "q35", "-m", "2815M"], [(0, 2815 * MiB)]),
    "q35-2816M-split-2G": (["-machine", "type=pc-q35-7.2", "-m", "2816M"], [(0, 2 * GiB), (FOUR_GIB, 768 * MiB)]),
    "numa-memdevs-out-of-order": (
        ["-m", "4G", "-object", "memory-backend-memfd,id=m1,size=2G",
         "-object", '{"qom-type": "memory-backend-ram", "id": "m0", "size": 2147483648}',
         "-numa", "node,nodeid=1,memdev=m1", "-numa", "node,nodeid=0,memdev=m0"],
        [(0, 2 * GiB), (2 * GiB, GiB), (FOUR_GIB, GiB)]),
    "same-size-memdevs": (
        ["-m", "512", "-object", "memory-backend-ram,id=a,size=256M",
         "-object", "memory-backend-ram,id=b,size=256M",
         "-numa", "node,memdev=a", "-numa", "node,memdev=b"], [(0, 256 * MiB), (256 * MiB, 256 * MiB)]),
    "shared-ram": (["-object", "memory-backend-ram,id=r,size=256M,share=on", "-M", "pc,memory-backend=r",
                    "-m", "256"], [(0, 256 * MiB)]),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_cmdline_layout_agrees_with_qmp(tmp_path, name):
    args, want = CONFIGS[name]
    with PausedQemu(tmp_path, *args) as q:
        cmd = find_guest_ram(q.pid)
        qmp = find_guest_ram(q.pid, qmp=q.qmp)
    assert [(r.gpa_start, r.size_bytes) for r in cmd.regions] == want
    assert cmd.source == "cmdline" and qmp.source == "qmp" and cmd.accel == "tcg"
    same_translation(cmd, qmp)


def test_file_backend_in_a_directory(tmp_path):
    d = tmp_path / "ram"
    d.mkdir()
    args = ["-object", f"memory-backend-file,id=f,size=128M,mem-path={d}", "-M", "pc,memory-backend=f",
            "-m", "128"]
    with PausedQemu(tmp_path, *args) as q:
        cmd = find_guest_ram(q.pid)
        same_translation(cmd, find_guest_ram(q.pid, qmp=q.qmp))
    assert cmd.regions[0].backend_name == "f" and cmd.regions[0].size_bytes == 128 * MiB


def test_qmp_socket_of_another_vm_is_refused(tmp_path):
    with PausedQemu(tmp_path, "-m", "128") as a, PausedQemu(tmp_path, "-m", "128") as b:
        with pytest.raises(BadInput, match=f"belongs to PID {b.pid}, not to PID {a.pid}"):
            find_guest_ram(a.pid, qmp=b.qmp)


def test_not_a_vmm_and_listing(tmp_path):
    with pytest.raises(UsageError, match="not a virtual machine monitor"):
        describe(os.getpid())
    with PausedQemu(tmp_path, "-m", "192", "-name", "guest=listed") as q:
        assert q.pid in [v.pid for v in list_vmms()]
        out = subprocess.run([sys.executable, "-m", "idlemap", "vms", "--json"], capture_output=True,
                             text=True, check=True).stdout
        mine = next(v for v in json.loads(out)["vmms"] if v["pid"] == q.pid)
        assert mine["kind"] == "qemu" and mine["layout"]["ram_bytes"] == 192 * MiB
        assert mine["layout"]["name"] == "listed"
        out = subprocess.run([sys.executable, "-m", "idlemap", "vms", str(q.pid)], capture_output=True,
                             text=True, check=True).stdout
        assert "guest 'listed', tcg: 192 MiB guest RAM in 1 region" in out and "pc.ram" in out


def test_kvm_guest_refuses_a_backend_blind_to_it(tmp_path):
    """clear_refs ages host PTEs only: for a KVM guest it would report every
    page idle, so it is refused.  (A paused KVM QEMU runs no guest code, so
    it starts even where stock guests cannot boot under KVM.)"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm (CONFIG_KVM) to create a KVM VM")
    from idlemap.backends.clear_refs import ClearRefsBackend
    try:
        q = PausedQemu(tmp_path, "-m", "128", accel="kvm")
    except RuntimeError as e:
        pytest.skip(f"this host's KVM cannot create a VM: {e}")
    with q:
        layout = find_guest_ram(q.pid)
        assert layout.accel == "kvm"
        with pytest.raises(UsageError, match="cannot see a KVM guest's accesses"):
            GuestBackend(ClearRefsBackend, identify(q.pid), layout)


def test_vmm_exits_mid_scan_clean_stop(tmp_path):
    """`idlemap wss --vm` on a VMM that is killed mid-scan: the windows so
    far are printed, then one sentence and exit status 1, no traceback."""
    with PausedQemu(tmp_path, "-m", "256") as q:
        wss = subprocess.Popen([sys.executable, "-m", "idlemap", "wss", "--vm", str(q.pid), "0.05",
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = json.loads(wss.stdout.readline())      # one window done: the scan is under way
            assert first["address_space"] == "guest-physical" and first["pid"] == q.pid
            os.kill(q.pid, signal.SIGKILL)
            q.proc.wait()
            out, err = wss.communicate(timeout=120)
        finally:
            end(wss)
    assert wss.returncode == 1, err
    assert err.strip() == f"idlemap: process {q.pid} exited during the scan"
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-1]["schema"] == "idlemap.wss.summary/2" and lines[-1]["samples"] >= 1


def test_cli_usage_errors(tmp_path):
    def run(*a):
        p = subprocess.run([sys.executable, "-m", "idlemap", *a], capture_output=True, text=True)
        return p.returncode, p.stderr

    rc, err = run("wss", str(os.getpid()), "0.1", "1", "--qmp", "/nonexistent")
    assert rc == 2 and "--qmp goes with --vm" in err
    rc, err = run("vms", str(os.getpid()))
    assert rc == 2 and "not a virtual machine monitor" in err and "Traceback" not in err
    with PausedQemu(tmp_path, "-m", "128") as q:
        rc, err = run("vms", str(q.pid), "--qmp", str(tmp_path / "nope.sock"))
        assert rc == 65 and "cannot connect to the QMP socket" in err
