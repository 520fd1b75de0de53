"""kmod/idlemap.h in Python: the device, the interface version and the ioctl
numbers of idlemap's module, and the one probe of which interface a loaded
module speaks.  No numpy, so the feature probes (kernel/features.py) can
ask without loading it; kernel/kmod.py does the operations.  Keep in step
with kmod/idlemap.h.
"""
from __future__ import annotations

import fcntl
import os
import struct

DEVICE = "/dev/idlemap"
MODULE = "idlemap_kmod"
API_VERSION = 3                        # IDLEMAP_API_VERSION this idlemap speaks

# What replaces a loaded module built for another idlemap (another API_VERSION).
REBUILD = "`idlemap kmod build`, `idlemap kmod unload`, `idlemap kmod load`"

MAGIC = 0xB7
WALK = struct.Struct("=6Q2I3Q")        # struct idlemap_walk, 80 bytes


def _io(nr: int) -> int:
    return (MAGIC << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (MAGIC << 8) | nr


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (MAGIC << 8) | nr


IOC_VERSION = _io(0)
IOC_BIND = _io(1)
IOC_SET_MODE = _io(2)
IOC_WALK = _iowr(3, WALK.size)
IOC_MAPS_SIG = _ior(4, 8)

MODE_IDLE = 0x0
MODE_PRESENT = 0x1
MODE_REMARK = 0x100
WALK_CLEAR = 0x1
WALK_NOFLUSH = 0x2                     # with WALK_CLEAR: the flush left to the next call


def interface_version() -> int | None:
    """The loaded module's IDLEMAP_IOC_VERSION, or None where it cannot be
    asked (not loaded, or not root: opening the device needs CAP_SYS_ADMIN;
    an open changes nothing)."""
    try:
        fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, IOC_VERSION)
    except OSError:
        return None
    finally:
        os.close(fd)
