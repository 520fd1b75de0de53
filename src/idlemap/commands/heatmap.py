"""idlemap heatmap PID: scan N rounds, then draw the VA x time heatmap."""
from __future__ import annotations

from .. import outputs
from .live import scan_and_show
from .record import add_scan_arguments
from .report import add_picture_options

HELP = "scan a process for N rounds, then draw its accesses by address and time (terminal and PNG)"
EXAMPLES = """\
  idlemap heatmap 1234                      # 30 rounds of 1 s, drawn in the terminal
  idlemap heatmap 1234 0.2 100 --png heat.png   # 100 rounds of 0.2 s (or: -i 0.2 -n 100)
  idlemap heatmap 1234 -o app.rec           # keep the rounds (idlemap report app.rec heatmap)
  idlemap heatmap 1234 --json               # the matrix behind the picture
  idlemap heatmap --vm 4321 --png vm.png    # a VMM: guest-physical address x time
"""


def add_arguments(p) -> None:
    add_scan_arguments(p, 30)
    p.add_argument("-o", "--output", metavar="FILE", type=outputs.arg("the record"),
                   help="also write the rounds to a record file")
    p.add_argument("--json", action="store_true", help="the heatmap matrix as one JSON object")
    add_picture_options(p, "also write the heatmap as a PNG (needs matplotlib)")


def run(args) -> int:
    return scan_and_show("heatmap", args)
