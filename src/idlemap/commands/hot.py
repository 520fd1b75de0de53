"""idlemap hot PID: scan N rounds, then report hot (or cold) ranges."""
from __future__ import annotations

from .. import outputs
from .live import scan_and_show
from .record import add_scan_arguments
from .report import add_threshold_options

HELP = "scan a process for N rounds, then list its hot (or --cold) VA ranges by mapping"
EXAMPLES = """\
  idlemap hot 1234                   # 10 rounds of 1 s; ranges accessed in every round
  idlemap hot 1234 0.5 20 --min-count 15   # 20 rounds of 0.5 s (or: -i 0.5 -n 20)
  idlemap hot 1234 --cold            # resident and never accessed in the 10 rounds
  idlemap hot 1234 --histogram       # pages by access count and idle age
  idlemap hot 1234 -o app.rec        # also keep the rounds as a record file
  idlemap hot 1234 --json
  idlemap hot --vm 4321              # PID is a VMM: hot guest-physical ranges of its guest
"""


def add_arguments(p) -> None:
    add_scan_arguments(p, 10)
    p.add_argument("--cold", action="store_true", help="list cold ranges instead of hot ones")
    p.add_argument("--histogram", action="store_true", help="print the access-count/idle-age histograms instead")
    p.add_argument("-o", "--output", metavar="FILE", type=outputs.arg("the record"),
                   help="also write the rounds to a record file")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--png", metavar="FILE", type=outputs.arg("the PNG"), help="with --histogram: also write a PNG")
    add_threshold_options(p)


def run(args) -> int:
    kind = "histogram" if args.histogram else ("cold" if args.cold else "hot")
    return scan_and_show(kind, args)
