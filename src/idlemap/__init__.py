"""idlemap: per-process idle page tracking, indexed by virtual address."""
from .errors import IdlemapError

__version__ = "0.1.0"
__all__ = ["IdleBitmap", "IdleMap", "IdlemapError", "MappingUsage", "Span", "WssSample", "open_record"]


def __getattr__(name: str):
    # Loaded on first use: the record reader pulls in the scanner and every
    # backend, which `import idlemap` (e.g. in a workload child) need not pay for.
    # IdleBitmap and the records pull in numpy: lazy too, so that `idlemap`
    # (cli.main) installs its Ctrl-C/SIGTERM handling before any slow import.
    if name == "open_record":
        from .formats.record import open_record
        return open_record
    if name == "IdleBitmap":
        from .bitmap import IdleBitmap
        return IdleBitmap
    if name in ("IdleMap", "MappingUsage", "Span", "WssSample"):
        from . import records
        return getattr(records, name)
    raise AttributeError(f"module 'idlemap' has no attribute {name!r}")
