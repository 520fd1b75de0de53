"""kernel/kmod_abi.py spells kmod/idlemap.h's numbers once in Python: the
two agree (the header's own macros evaluated here, as the C compiler would)."""
import re
from pathlib import Path

from idlemap.kernel import kmod_abi

HEADER = Path(__file__).resolve().parents[2] / "kmod" / "idlemap.h"
DIR = {"_IO": 0, "_IOW": 1, "_IOR": 2, "_IOWR": 3}
SIZES = {"struct idlemap_walk": 80, "__u64": 8}


def defines() -> dict[str, str]:
    return dict(re.findall(r"^#define\s+(IDLEMAP_\w+)\s+(.+?)\s*(?:/\*.*)?$", HEADER.read_text(), re.M))


def test_interface_version_magic_and_flags_agree():
    d = defines()
    assert int(d["IDLEMAP_API_VERSION"]) == kmod_abi.API_VERSION
    assert int(d["IDLEMAP_IOC_MAGIC"], 16) == kmod_abi.MAGIC
    for name in ("MODE_IDLE", "MODE_PRESENT", "MODE_REMARK", "WALK_CLEAR", "WALK_NOFLUSH"):
        assert int(d[f"IDLEMAP_{name}"], 16) == getattr(kmod_abi, name), name


def test_every_ioctl_number_agrees():
    d = defines()
    iocs = {k: v for k, v in d.items() if k.startswith("IDLEMAP_IOC_") and k != "IDLEMAP_IOC_MAGIC"}
    assert len(iocs) == 5
    for name, expr in iocs.items():
        m = re.fullmatch(r"(_IO\w*)\(IDLEMAP_IOC_MAGIC,\s*(\d+)(?:,\s*(.+))?\)", expr)
        assert m, expr
        size = SIZES[m.group(3)] if m.group(3) else 0
        want = (DIR[m.group(1)] << 30) | (size << 16) | (kmod_abi.MAGIC << 8) | int(m.group(2))
        assert getattr(kmod_abi, name.removeprefix("IDLEMAP_")) == want, name


def test_the_walk_record_is_the_headers_struct():
    fields = re.search(r"struct idlemap_walk \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    types = re.findall(r"^\s*(__u\d+)\s+\w+;", fields, re.M)
    assert "".join("Q" if t == "__u64" else "I" for t in types) == kmod_abi.WALK.format.lstrip("=").replace(
        "6Q", "QQQQQQ").replace("2I", "II").replace("3Q", "QQQ")
    assert kmod_abi.WALK.size == SIZES["struct idlemap_walk"]
