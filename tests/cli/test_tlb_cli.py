"""The TLB flush as every command shows it, on the host kernel (clear_refs
backend here; page_idle and the soft-dirty guard: tests/system/test_tlb_safety_vm.py)."""
import json

from idlemap.cli import main
from idlemap.kernel.features import probe
from idlemap.tlb import kernel_has_soft_dirty
from idlemap.testing.workload import Workload


def test_flushed_by_default_and_said_when_not(capsys):
    with Workload() as w:
        w.map("a", 4)
        w.touch("a")
        assert main(["wss", str(w.pid), "0.05", "1", "--json"]) == 0
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        assert (row["tlb_flush"], row["tlb_exact"]) == ("soft-dirty", True)
        assert main(["wss", str(w.pid), "0.05", "2"]) == 0
        assert "note:" not in capsys.readouterr().out
        assert main(["wss", str(w.pid), "0.05", "2", "--tlb-flush", "none"]) == 0
        out = capsys.readouterr().out
        assert out.count("note: TLB not flushed") == 1      # once, not per row
        assert main(["wss", str(w.pid), "0.05", "1", "--json", "--tlb-flush", "none"]) == 0
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        assert (row["tlb_flush"], row["tlb_exact"]) == ("none", False)


def test_soft_dirty_found_by_looking():
    """Our own pagemap tells whether the kernel tracks soft-dirty bits; it
    agrees with the kernel's config where that is readable."""
    known = probe().soft_dirty
    if known is not None:
        assert kernel_has_soft_dirty() == known
