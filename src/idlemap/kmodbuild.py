"""Build idlemap's kernel module (kmod/) against a kernel tree, and find it.

Builds go to a cache directory keyed by the kernel release, a hash of the
sources and a hash of the kernel's configuration (``$IDLEMAP_CACHE``,
default /var/cache/idlemap, else the temp directory when that is read-only,
as in the test VM), so ``idlemap kmod load`` finds the module built for the
running kernel, and an edited source or a kernel rebuilt with another
configuration under the same release builds again.  The configuration is
in the key because the release alone does not pin structure layouts: a
kernel developer's rebuild with (say) CONFIG_MMU_NOTIFIER added keeps its
release but moves fields of mm_struct, and a module built for the old
layout would load (no MODVERSIONS to refuse it) and corrupt memory.
Each failure is one sentence (errors.IdlemapError).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import CannotWrite, Unavailable, UsageError
from .kernel.kmod import MODULE

SOURCES = ("idlemap_kmod.c", "idlemap.h", "Makefile", "dkms.conf")


def source_dir() -> Path:
    """kmod/ of this checkout (the package is installed editable from it)."""
    d = Path(__file__).resolve().parents[2] / "kmod"
    if not (d / "idlemap_kmod.c").exists():
        raise Unavailable(f"the module's source is not next to this idlemap ({d} is missing): "
                          "build from a checkout of idlemap")
    return d


def source_hash(src: Path | None = None) -> str:
    src = src or source_dir()
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (src / name).read_bytes())
    return h.hexdigest()[:12]


def default_kdir(release: str | None = None) -> str:
    return f"/lib/modules/{release or os.uname().release}/build"


def tree_release(kdir: str) -> str:
    """The release a kernel tree builds for: UTS_RELEASE (what the module's
    vermagic says), else include/config/kernel.release.  Debian's header
    packages differ: kernel.release holds the upstream version (6.1.192, the
    same as the test VM's tree, so the two builds would share a cache entry)
    while UTS_RELEASE is the package's 6.1.0-N-amd64."""
    try:
        m = re.search(r'UTS_RELEASE\s+"([^"]+)"',
                      Path(kdir, "include/generated/utsrelease.h").read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        return Path(kdir, "include/config/kernel.release").read_text().strip()
    except OSError:
        return ""


def _roots() -> tuple[Path, Path]:
    base = Path(os.environ.get("IDLEMAP_CACHE", "/var/cache/idlemap"))
    return base / "kmod", Path(tempfile.gettempdir()) / "idlemap-kmod"


def _cache_root() -> Path:
    for root in _roots():
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".w{os.getpid()}"
            probe.touch()
            probe.unlink()
            return root
        except OSError:
            continue
    raise CannotWrite("no writable directory to build the module in (set IDLEMAP_CACHE)")


def config_digest(text: str) -> str:
    """A short hash of a kernel configuration: its CONFIG_ lines, sorted, so
    comments and order (which differ between a tree's .config and the copy
    a kernel carries) do not count."""
    lines = sorted(ln.strip() for ln in text.splitlines() if ln.startswith("CONFIG_"))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:8]


def tree_config(kdir: str) -> str:
    """The configuration a kernel tree builds with (its .config)."""
    try:
        return Path(kdir, ".config").read_text()
    except OSError:
        raise UsageError(f"{kdir} is not a configured kernel tree (no .config)") from None


def running_config(release: str | None = None) -> str | None:
    """The running kernel's configuration, where it keeps one: /proc/config.gz
    (CONFIG_IKCONFIG_PROC, as in the test VM), /boot/config-RELEASE (Debian
    and most distributions), or its headers' .config; None if none is there."""
    release = release or os.uname().release
    try:
        return gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        pass
    for path in (f"/boot/config-{release}", os.path.join(default_kdir(release), ".config")):
        try:
            return Path(path).read_text()
        except OSError:
            continue
    return None


def built_path(release: str, src: Path | None = None, config: str | None = None) -> Path:
    """Where the module for ``release`` with configuration ``config`` (text)
    is, or would be built: an existing build in either cache first -- the
    test VM sees the host's cache read-only, so a module built on the host
    (~2 s) saves building under TCG (~28 s).  Without ``config``: the running
    kernel's if ``release`` is running and its configuration can be read;
    else the one build of ``release`` from these sources, if only one is
    cached (a Debian kernel booted without /boot, as in the test VM)."""
    prefix = f"{release}-{source_hash(src)}"
    if config is None and release == os.uname().release:
        config = running_config(release)
    if config is None:
        found = sorted({ko for root in _roots() for ko in root.glob(f"{prefix}-*/{MODULE}.ko")})
        if len(found) > 1:
            raise UsageError(f"several builds of the module for {release} differ in kernel configuration "
                             "and this kernel's cannot be read (no /proc/config.gz or "
                             f"/boot/config-{release}): pass the one to load with --ko")
        return found[0] if found else _cache_root() / f"{prefix}-unknown" / f"{MODULE}.ko"
    name = f"{prefix}-{config_digest(config)}"
    for root in _roots():
        ko = root / name / f"{MODULE}.ko"
        if ko.exists():
            return ko
    return _cache_root() / name / f"{MODULE}.ko"


def build(kdir: str | None = None, log=None) -> Path:
    """make -C KDIR M=<cache dir> modules; returns the .ko.  KDIR defaults to
    the running kernel's headers."""
    explicit = kdir is not None
    kdir = kdir or default_kdir()
    if not os.path.isfile(os.path.join(kdir, "Makefile")):
        if explicit:
            raise UsageError(f"{kdir} is not a configured kernel tree (no Makefile)")
        rel = os.uname().release
        raise Unavailable(f"no kernel headers for this kernel ({kdir} is missing): "
                          f"install the package linux-headers-{rel}")
    missing = [t for t in ("make", "gcc") if shutil.which(t) is None]
    if missing:
        raise Unavailable(f"no C compiler to build the module ({' and '.join(missing)} not found): "
                          "install gcc and make")
    release = tree_release(kdir)
    if not release:
        raise UsageError(f"{kdir} is not a prepared kernel tree (no include/config/kernel.release)")
    src = source_dir()
    ko = built_path(release, src, tree_config(kdir))
    if ko.exists():
        return ko
    work = ko.parent
    work.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        shutil.copy2(src / name, work / name)
    r = subprocess.run(["make", "-C", kdir, f"M={work}", "modules", *_no_btf(kdir)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log is not None:
        log(r.stdout)
    if r.returncode != 0 or not ko.exists():
        err = next((ln.strip() for ln in r.stdout.splitlines() if re.search(r"error", ln, re.I)),
                   r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "make failed")
        raise Unavailable(f"building the module against {kdir} failed: {err}")
    return ko


def _no_btf(kdir: str) -> list[str]:
    """Make arguments that skip the module's BTF when pahole is missing.

    A tree with CONFIG_DEBUG_INFO_BTF_MODULES and a vmlinux (Debian's 6.12
    headers ship one; 6.1's do not) runs pahole (package dwarves) after
    linking, and fails without it.  BTF only serves BPF tools that read the
    module's types; the module works the same without it."""
    if shutil.which("pahole") or not os.path.exists(os.path.join(kdir, "vmlinux")):
        return []
    try:
        config = Path(kdir, ".config").read_text()
    except OSError:
        return []
    return ["CONFIG_DEBUG_INFO_BTF_MODULES="] if "CONFIG_DEBUG_INFO_BTF_MODULES=y" in config else []


def vermagic(ko: Path) -> str:
    """The kernel release a .ko was built for (its .modinfo vermagic=)."""
    data = Path(ko).read_bytes()
    i = data.find(b"vermagic=")
    if i < 0:
        return ""
    j = data.find(b"\0", i)
    words = data[i + 9:j].decode("utf-8", "replace").split()
    return words[0] if words else ""        # "vermagic=" with nothing after it: none


def vm_kernel_tree(debug: bool | None = None) -> str:
    """The configured tree of idlemap's test-VM kernel (testvm/build-kernel.sh):
    the debug kernel's (KASAN, lockdep...) if debug, else the plain one's.
    None: the debug tree when running on the debug kernel (its release ends
    in -debug, so the two modules never share a cache entry), else the plain."""
    if debug is None:
        debug = os.uname().release.endswith("-debug")
    script = Path(__file__).resolve().parent / "testvm" / "build-kernel.sh"
    args = ["--debug", "--path"] if debug else ["--path"]
    r = subprocess.run(["bash", str(script), *args], stdout=subprocess.PIPE, text=True, check=True)
    return str(Path(r.stdout.strip()).parent / "build")
