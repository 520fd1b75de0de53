"""idlemap: per-process idle page tracking, indexed by virtual address."""
from .bitmap import IdleBitmap
from .errors import IdlemapError
from .records import IdleMap, MappingUsage, Span, WssSample

__version__ = "0.1.0"
__all__ = ["IdleBitmap", "IdleMap", "IdlemapError", "MappingUsage", "Span", "WssSample", "open_record"]


def __getattr__(name: str):
    # Loaded on first use: the record reader pulls in the scanner and every
    # backend, which `import idlemap` (e.g. in a workload child) need not pay for.
    if name == "open_record":
        from .recordfile import open_record
        return open_record
    raise AttributeError(f"module 'idlemap' has no attribute {name!r}")
