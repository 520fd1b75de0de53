"""idlemap: per-process idle page tracking, indexed by virtual address."""
from .bitmap import IdleBitmap
from .errors import IdlemapError
from .records import IdleMap, MappingUsage, Span, WssSample

__version__ = "0.1.0"
__all__ = ["IdleBitmap", "IdleMap", "IdlemapError", "MappingUsage", "Span", "WssSample"]
