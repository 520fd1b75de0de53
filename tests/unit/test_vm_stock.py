"""The stock-kernel initramfs (idlemap.testvm.stock), built from a fake cache
entry: what the archive holds and in which form the kernel reads it."""

import pytest

from idlemap.testvm import BUSYBOX, stock


def unnewc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """Parse a newc archive: name -> (mode, data, rdev)."""
    out, i = {}, 0
    while True:
        assert data[i:i + 6] == b"070701"
        f = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        i += 110 + namesize
        i += -i % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[i:i + size], rdev)
        i += size
        i += -i % 4


def test_newc_round_trip():
    entries = [("a", 0o040755, b"", (0, 0)), ("a/b", 0o100644, b"xyz", (0, 0)),
               ("dev/console", 0o020600, b"", (5, 1))]
    got = unnewc(stock.newc(entries))
    assert got == {n: (m, d, r) for n, m, d, r in entries}


@pytest.mark.skipif(not stock._is_static(BUSYBOX), reason="needs a static busybox (busybox-static)")
def test_initramfs_holds_busybox_init_and_modules_in_order(tmp_path):
    (tmp_path / "modules").mkdir()
    for m in ("virtio", "9p"):
        (tmp_path / "modules" / f"{m}.ko").write_bytes(b"\x7fELF" + m.encode())
    (tmp_path / "modules.order").write_text("virtio\n9p\n")
    path = stock.initramfs(tmp_path)
    assert path.parent == tmp_path and stock.initramfs(tmp_path) == path     # cached
    files = unnewc(path.read_bytes())
    assert files["init"][0] == 0o100755 and files["init"][1].startswith(b"#!/bin/busybox sh")
    assert files["bin/busybox"][1] == open(BUSYBOX, "rb").read()
    assert files["dev/console"][2] == (5, 1)
    assert files["modules.order"][1] == b"virtio\n9p\n"
    assert files["lib/modules/9p.ko"][1] == b"\x7fELF9p"
    # a changed input (a module) names a new archive
    (tmp_path / "modules" / "9p.ko").write_bytes(b"\x7fELF9p2")
    assert stock.initramfs(tmp_path) != path


def test_init_mounts_root_from_the_command_line_and_switches():
    # the same kernel command line as the test kernel: root=, rootflags=,
    # init=, then what follows "--" is handed on
    assert "root=*) root=" in stock.INIT and "rootflags=*)" in stock.INIT
    assert 'switch_root /newroot "$init" "$@"' in stock.INIT


def test_not_static_is_detected(tmp_path):
    p = tmp_path / "dyn"
    p.write_bytes(b"\x7fELF" + b"\0" * 100 + b"/lib64/ld-linux-x86-64.so.2")
    assert not stock._is_static(str(p))
    assert not stock._is_static(str(tmp_path / "missing"))
