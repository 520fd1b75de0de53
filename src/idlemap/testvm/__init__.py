"""Run a command in idlemap's test VM.

No distribution kernel has CONFIG_IDLE_PAGE_TRACKING, so the features
idlemap is built on can only be tested for real in a kernel of our own
(build-kernel.sh).  run() boots it in QEMU with the host's "/" as the
guest's root filesystem (9p, read-only), so the host's Python, its
site-packages and this checkout run unchanged.  The command's output streams
to our stdout and its exit status comes back.  A boot costs a few seconds
under TCG, so callers boot one VM per test run, not one per test.
"""
from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..errors import VmError

__all__ = ["kernel_image", "real_python", "run"]

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-kernel.sh"
GUEST_INIT = HERE / "guest-init.sh"
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
P9_OPTS = "trans=virtio,version=9p2000.L,msize=262144"
GUEST_RUN_DIR = "/run/idlemap-vm"      # where guest-init.sh mounts the run directory

# Host directories that get a writable, throw-away overlay in the guest (plus
# the command's working directory): Python writes caches and pyc files,
# pytest writes tmp_path under /tmp.
OVERLAID = ("/tmp", "/var/tmp", "/root")
# Never overlaid: the guest mounts its own proc/sys/dev/run there.
_OWN_MOUNTS = ("/proc", "/sys", "/dev", "/run")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _cache_dir() -> Path:
    return Path(os.environ.get("IDLEMAP_CACHE", "/var/cache/idlemap"))


def kernel_image(build: bool = True, progress: Callable[[str], None] | None = None,
                 debug: bool = False) -> str:
    """Path of the test-VM bzImage, building it (~5 min, once) if missing.

    debug: the same kernel with KASAN, PROVE_LOCKING, DEBUG_VM... (release
    6.1.N-debug; ~10 min to build on 2 cores, once).  progress, if given,
    receives the build's progress lines as they come.
    """
    flag = ("--debug",) if debug else ()
    path = _build_script(*flag, "--path").strip()
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    if not build:
        raise VmError(f"the test-VM kernel is not built yet (no {path}); "
                      f"run scripts/setup.sh or {BUILD_SCRIPT}")
    # build-kernel.sh has no lock of its own; two concurrent builds would
    # double the 5 minutes and race on the cache directory.
    _cache_dir().mkdir(parents=True, exist_ok=True)
    with open(_cache_dir() / "kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_script(*flag, progress=progress).strip()


def _build_script(*args: str, progress: Callable[[str], None] | None = None) -> str:
    """Run build-kernel.sh, return its stdout (the bzImage path)."""
    tail: deque[str] = deque(maxlen=20)
    proc = subprocess.Popen(["bash", str(BUILD_SCRIPT), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        tail.append(line.rstrip("\n"))
        if progress:
            progress(line.rstrip("\n"))
    out = proc.stdout.read()
    if proc.wait() != 0:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        if not progress:
            sys.stderr.write("\n".join(tail) + "\n")
        raise VmError(f"building the test-VM kernel failed ({BUILD_SCRIPT.name} said: {last.strip()})")
    return out


def real_python() -> str:
    """The Python interpreter to run in the guest.

    A pyenv shim is a shell script that runs `pyenv exec`: ~2-3 s per call
    under TCG.  Resolving symlinks also saves the guest a few 9p lookups.
    """
    exe = sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not exe or _is_script(exe):
        return os.path.join(sys.base_prefix, "bin", version)
    if sys.prefix != sys.base_prefix:
        # A virtualenv's python is a symlink to the base interpreter, and it
        # finds its venv from its own path: resolving it would lose the venv.
        return exe
    return os.path.realpath(exe)


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def run(argv: list[str], *, mem_mib: int = 2048, cpus: int = 2, numa_nodes: int = 1,
        env: Mapping[str, str] | None = None, timeout_s: float = 1800, cwd: str | None = None,
        rw_dirs: Iterable[str] = (), extra_qemu_args: Iterable[str] = (),
        kernel: str | None = None, initrd: str | None = None, kernel_args: Iterable[str] = ()) -> int:
    """Boot the test VM, run argv there as root in cwd, return its exit status.
    ``kernel_args``: more kernel command-line parameters (e.g. a boot-time
    hugetlb reservation).

    The command's stdout and stderr both stream to our file descriptor 1.
    The guest sees the host's files read-only; /tmp, /var/tmp, /root and cwd
    are writable there, but writes are thrown away.  Each of rw_dirs is
    shared read-write at the same path: the way to bring results back.  PATH
    and env are set in the guest, nothing else of our environment is.
    """
    if not argv:
        raise ValueError("run() needs a command")
    if mem_mib < 128 or cpus < 1 or not 1 <= numa_nodes <= cpus:
        raise ValueError("need mem_mib >= 128, cpus >= 1 and 1 <= numa_nodes <= cpus")
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} is not installed (apt-get install qemu-system-x86, or run scripts/setup.sh)")
    # kernel/initrd: another kernel than the test kernel (vm/stock.py: Debian's,
    # whose initramfs loads the 9p modules and then runs the same guest-init)
    kernel = kernel or kernel_image(progress=lambda line: print(line, file=sys.stderr, flush=True))
    cwd = os.path.realpath(cwd or os.getcwd())
    rw = sorted({_existing_dir(d) for d in rw_dirs})

    with tempfile.TemporaryDirectory(prefix="idlemap-vm.") as run_dir:
        _write_run_dir(Path(run_dir), argv, env or {}, cwd, rw)
        qemu = [QEMU, *_accel_args(), *_machine_args(mem_mib, cpus, numa_nodes),
                "-nodefaults", "-no-user-config", "-display", "none",
                # the guest ends by resetting itself: make that end qemu
                "-no-reboot",
                "-kernel", kernel, *(["-initrd", initrd] if initrd else []),
                "-append", _kernel_cmdline(kernel_args),
                "-serial", f"file:{run_dir}/console.log",
                # the command's output: a virtio console on our stdout
                "-chardev", "stdio,id=out,signal=off",
                "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=out",
                # entropy from the start: getrandom() (Python needs it) must
                # not wait for the guest's CRNG to fill up
                "-device", "virtio-rng-pci",
                *_virtfs("/", "idlemap-root", readonly=True),
                *_virtfs(run_dir, "idlemap-run"),
                *[a for i, d in enumerate(rw) for a in _virtfs(d, f"idlemap-rw{i}")],
                *extra_qemu_args]
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL)
        try:
            qemu_rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise VmError(f"the command did not finish within {timeout_s:g} s, so the VM was stopped") from None
        except BaseException:          # Ctrl-C: don't leave qemu running
            proc.kill()
            proc.wait()
            raise
        return _result(Path(run_dir), qemu_rc)


def _existing_dir(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise VmError(f"cannot share {path} with the VM: it is not a directory")
    return real


def _write_run_dir(run_dir: Path, argv: list[str], env: Mapping[str, str], cwd: str,
                   rw: list[str]) -> None:
    q = shlex.quote
    lines = [f"export PATH={q(os.environ.get('PATH', '/usr/bin:/bin'))}"]
    # The output goes to a virtio console, a tty in the guest: keep tools from
    # colouring it (pytest, ls...) unless our own stdout is a terminal.
    term = os.environ.get("TERM", "dumb") if os.isatty(1) else "dumb"
    lines.append(f"export TERM={q(term)}")
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"export {name}={q(str(value))}")
    error = q(f"the working directory {cwd} does not exist in the VM")
    lines.append(f"cd {q(cwd)} || {{ echo {error} > {GUEST_RUN_DIR}/error; exit 125; }}")
    lines.append("exec " + " ".join(q(a) for a in argv))
    (run_dir / "cmd.sh").write_text("\n".join(lines) + "\n")

    mounts = [f"overlay - {d}" for d in _outermost([*OVERLAID, cwd])]
    mounts += [f"rw idlemap-rw{i} {d}" for i, d in enumerate(rw)]
    for line in mounts:
        # guest-init.sh reads these with `read`, and overlayfs takes ',' and
        # ':' as separators in lowerdir=
        if "\n" in line or (line.startswith("overlay") and re.search(r"[,:\\]", line)):
            raise VmError(f"cannot share this path with the VM: {line.split(' ', 2)[2]!r}")
    (run_dir / "mounts").write_text("".join(f"{m}\n" for m in mounts))


def _outermost(dirs: Iterable[str]) -> list[str]:
    """The existing dirs, minus those inside another one (one overlay covers them)."""
    keep: list[str] = []
    for d in sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)}):
        if d == "/" or any(d == m or d.startswith(m + "/") for m in _OWN_MOUNTS):
            continue
        if not any(d.startswith(k + "/") for k in keep):
            keep.append(d)
    return keep


def _accel_args() -> list[str]:
    accel = os.environ.get("IDLEMAP_VM_ACCEL", "auto")
    if accel == "auto":
        accel = "kvm" if _kvm_usable() else "tcg"
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        # Software emulation: ~14x slower for CPU-bound code, but it runs
        # anywhere, and its software TLB even reproduces page_idle's
        # no-TLB-flush behaviour.  Without AVX2: QEMU 7.2's emulation of
        # AVX2 masked loads faults on masked-off elements past a mapping's
        # end, where hardware does not, so numpy's AVX2 sort of an array
        # that ends just before an unmapped page segfaults in the guest
        # (measured: tests/system/test_vm_cpu.py; it crashed the FUSE
        # daemon in one CI run).  Without it numpy takes its SSE paths.
        return ["-accel", "tcg,thread=multi", "-cpu", "max,-avx2"]
    raise VmError(f"IDLEMAP_VM_ACCEL must be auto, kvm or tcg, not {accel!r}")


def _kvm_usable() -> bool:
    # Our CI machines are themselves PVM guests (module kvm_pvm): /dev/kvm
    # opens, but creates PVM guests, in which a stock kernel hangs at boot.
    if os.path.isdir("/sys/module/kvm_pvm"):
        return False
    return (os.access("/dev/kvm", os.R_OK | os.W_OK)
            and any(os.path.isdir(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd")))


def _machine_args(mem_mib: int, cpus: int, numa_nodes: int) -> list[str]:
    smp = str(cpus)
    if numa_nodes > 1 and cpus % numa_nodes == 0:
        # One socket per node: with all CPUs in one socket they share a
        # last-level cache across nodes, which the kernel WARNs about at boot
        # (smpboot.c topology_sane), and the kmod tests fail on any WARNING.
        smp = f"{cpus},sockets={numa_nodes},cores={cpus // numa_nodes},threads=1"
    args = ["-m", f"{mem_mib}M", "-smp", smp]
    if numa_nodes == 1:
        return args
    # One RAM backend per node and the CPUs split between them; QEMU
    # describes that in ACPI SRAT, which the kernel (ACPI_NUMA) reads.
    for node in range(numa_nodes):
        size = mem_mib // numa_nodes + (mem_mib % numa_nodes if node == numa_nodes - 1 else 0)
        first, end = node * cpus // numa_nodes, (node + 1) * cpus // numa_nodes
        args += ["-object", f"memory-backend-ram,id=mem{node},size={size}M",
                 "-numa", f"node,nodeid={node},memdev=mem{node},cpus={first}-{end - 1}"]
    return args


def _kernel_cmdline(extra: Iterable[str] = ()) -> str:
    if re.search(r"\s", str(GUEST_INIT)):
        raise VmError(f"the VM cannot start its init from a path with spaces: {GUEST_INIT}")
    if os.path.exists(BUSYBOX):
        # static busybox as the shell for PID 1: no dynamic loading under TCG
        init_args = f"init={BUSYBOX} -- sh {GUEST_INIT}"
    else:
        init_args = f"init=/bin/sh -- {GUEST_INIT}"
    return " ".join([
        "console=ttyS0 loglevel=4 panic=-1",
        # no PS/2 keyboard or mouse to probe: saves ~0.6 s under TCG
        "i8042.noaux i8042.nokbd",
        # ACPI's PCI interrupt-link set-up takes ~1 s under TCG; the BIOS's
        # PIRQ table routes the virtio interrupts as well.  (NUMA still comes
        # from ACPI's SRAT.)
        "pci=noacpi",
        "root=idlemap-root rootfstype=9p ro",
        # cache=loose: the root is read-only and nobody changes it during a
        # run, so the guest may cache it (much faster Python imports)
        f"rootflags={P9_OPTS},cache=loose",
        # as on the CI host, so THP behaves the same in tests
        "transparent_hugepage=madvise",
        # no ASLR: TCG then reuses its translated code across processes
        # (python -c pass: ~1.0 s -> ~0.7 s); also reproducible addresses
        "norandmaps",
        *extra,
        init_args,              # last: everything after "--" goes to init
    ])


def _virtfs(path: str, tag: str, readonly: bool = False) -> list[str]:
    # multidevs=remap: the host's "/" spans several filesystems whose inode
    # numbers would otherwise collide in the guest
    opts = f"local,path={path.replace(',', ',,')},mount_tag={tag},security_model=none,multidevs=remap"
    return ["-virtfs", opts + (",readonly=on" if readonly else "")]


def _result(run_dir: Path, qemu_rc: int) -> int:
    error = run_dir / "error"
    if error.exists():
        raise VmError(error.read_text().strip())
    try:
        return int((run_dir / "rc").read_text())
    except (OSError, ValueError):
        pass
    try:
        log = (run_dir / "console.log").read_text(errors="replace").splitlines()
    except OSError:
        log = []
    sys.stderr.write("".join(f"  {line}\n" for line in log[-30:]))
    raise VmError(f"the VM stopped (qemu exit status {qemu_rc}) before the command finished; "
                  "the last lines of its kernel log are above")
