"""idlemap kmod: build, load, unload and inspect idlemap's kernel module."""
from __future__ import annotations

import json
import os
import stat

from .. import kmodbuild, outputs
from ..errors import AccessDenied, BadInput, IdlemapError, Unavailable, UsageError
from ..kernel import kmod
from ..kernel.kmod_abi import REBUILD, interface_version

HELP = """\
idlemap's optional kernel module (kmod/, docs/kmod.md): /dev/idlemap walks a
process's own page tables by virtual address and flushes the TLB after
clearing accessed bits -- exact per-page tracking on kernels without
page_idle, with no soft-dirty trick.  Root only.  `--backend kmod` uses it."""
EXAMPLES = """\
  idlemap kmod build                   # against /lib/modules/$(uname -r)/build
  idlemap kmod build --kdir ~/linux    # against another configured tree
  idlemap kmod load                    # the module built for this kernel
  idlemap kmod status --json
  idlemap kmod unload
Install with DKMS instead (rebuilt on kernel upgrades): docs/kmod.md"""
SCHEMA = "idlemap.kmod/1"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["build", "load", "unload", "status"])
    p.add_argument("--kdir", metavar="DIR",
                   help="kernel build tree (default /lib/modules/$(uname -r)/build)")
    p.add_argument("--ko", metavar="FILE", help="load this .ko instead of the one built for this kernel")
    p.add_argument("--verbose", action="store_true", help="build: show make's output")
    p.add_argument("--json", action="store_true", help=f"status as JSON (schema {SCHEMA})")


def run(args) -> int:
    return {"build": _build, "load": _load, "unload": _unload, "status": _status}[args.action](args)


def _build(args) -> int:
    ko = kmodbuild.build(args.kdir, log=print if args.verbose else None)
    rel, here = kmodbuild.vermagic(ko), os.uname().release
    print(ko)
    if rel != here:
        print(f"note: built for {rel}; this kernel is {here}, so load it on a {rel} kernel")
    return 0


def _load(args) -> int:
    here = os.uname().release
    ko = args.ko
    if ko:
        # The argument first, then the system's state: a file that is no
        # module is the user's to fix whatever the kernel would say.
        _require_module_file(ko)
        rel = _module_release(ko)
    if kmod.loaded():
        raise UsageError("the idlemap module is already loaded (`idlemap kmod status`)")
    if not ko:
        ko = str(kmodbuild.built_path(here))
        if not os.path.isfile(ko):
            raise UsageError(f"no idlemap module built for this kernel ({here}) from these sources: "
                             f"run `idlemap kmod build` first")
        rel = _module_release(ko)
    why = kmod.refusal_reason()
    if why:
        raise Unavailable(f"cannot load the module: {why}")
    if rel != here:
        raise Unavailable(f"{ko} was built for {rel}, but this kernel is {here}: "
                           "rebuild it with `idlemap kmod build`")
    kmod.load(ko)
    print(f"loaded {ko}: {kmod.DEVICE}")
    return 0


def _require_module_file(ko: str) -> None:
    """--ko names a regular file (stat only: opening a FIFO would wait for a writer)."""
    try:
        mode = os.stat(ko).st_mode
    except FileNotFoundError:
        raise UsageError(f"no such module file: {ko}") from None
    except NotADirectoryError:
        raise UsageError(f"no such module file: {ko} (a part of the path is not a directory)") from None
    except PermissionError:
        raise AccessDenied(ko, "run as root") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{ko} is {outputs.file_kind(mode)}, not a module file")


def _module_release(ko: str) -> str:
    """The release the module at ``ko`` was built for; BadInput for a file
    that is no kernel module (not ELF, or no vermagic in its .modinfo)."""
    try:
        with open(ko, "rb") as f:
            elf = f.read(4) == b"\x7fELF"
        rel = kmodbuild.vermagic(ko) if elf else ""
    except PermissionError:
        raise AccessDenied(ko, "run as root") from None
    except OSError as e:
        raise BadInput(f"cannot read {ko}: {(e.strerror or str(e)).lower()}") from None
    if not elf:
        raise BadInput(f"{ko} is not a kernel module (not an ELF file)")
    if not rel:
        raise BadInput(f"{ko} is not a kernel module (no vermagic in it)")
    return rel


def _unload(args) -> int:
    kmod.unload()
    print("unloaded")
    return 0


def _status(args) -> int:
    here = os.uname().release
    try:
        ko = kmodbuild.built_path(here)
        built = str(ko) if ko.exists() else ""
    except IdlemapError:
        built = ""
    st = {
        "schema": SCHEMA,
        "kernel": here,
        "loaded": kmod.loaded(),
        "device": kmod.DEVICE if kmod.available() else "",
        "built": built,
        "headers": os.path.isfile(os.path.join(kmodbuild.default_kdir(here), "Makefile")),
        "refused": kmod.refusal_reason(),
        # the loaded module's interface version (null: not loaded, or not
        # root) and the one this idlemap speaks: a mismatch is an old build
        "interface": interface_version(),
        "speaks": kmod.API_VERSION,
    }
    if args.json:
        print(json.dumps(st))
        return 0
    print(f"kernel {here}")
    print(f"module: {'loaded, ' + kmod.DEVICE if st['loaded'] else 'not loaded'}")
    if st["interface"] is not None and st["interface"] != kmod.API_VERSION:
        print(f"interface: {st['interface']}, this idlemap speaks {kmod.API_VERSION}: a build for another "
              f"idlemap, not used ({REBUILD})")
    elif st["interface"] is not None:
        print(f"interface: {st['interface']} (this idlemap's)")
    print(f"built for this kernel: {built or 'no (`idlemap kmod build`)'}")
    if not st["headers"]:
        print(f"headers: missing (install linux-headers-{here})")
    if st["refused"]:
        print(f"loading refused: {st['refused']}")
    return 0
