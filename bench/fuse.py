"""Reading a 1 GiB process's idle_bitmap through `idlemap mount` vs the
Python API directly, in the same run (goal: the mount within 1.5x).

Needs page_idle and root: on a kernel without page_idle it runs itself in
the test VM,
    python -m bench.fuse [--size-mib 1024] [--rounds 5]
Prints one JSON line (schema idlemap.bench.fuse/1), then a table.

Both paths do the same work: the pages of the workload's mapping are
marked idle once, half of them touched, then each round reads the bitmap
words covering the mapping -- directly with IdleBitmap.read + rfc_words
(one IdleBitmap kept open, as the daemon keeps one per open file), and
through the mount with one pread of the same words (the kernel hands the
daemon 1 MiB requests).  Rounds alternate the two paths so that drift in
the machine hits both alike; medians are reported.  Also measured: marking
(mark_idle vs pwrite of all-ones), a sequential read of the whole 4 GiB file
(nearly all unmapped space), and a read of the whole idle_pages stream.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from idlemap.formats import idle_pages as ip
from idlemap.bitmap import IdleBitmap, require_page_idle
from idlemap.kernel import page_idle
from idlemap.testing.workload import Workload

from .common import emit_json, timed, vm_run

SCHEMA = "idlemap.bench.fuse/1"
WORD_VA = 64 * 4096


def start_mount(d: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "idlemap", "mount", d, "--foreground", "--json"],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise SystemExit("idlemap mount failed to start")
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--here", action="store_true", help="never go to the VM")
    args = ap.parse_args()
    if not args.here and not page_idle.available():
        return vm_run("fuse", ["--here", *sys.argv[1:]], mem_mib=3072)
    require_page_idle()
    d = tempfile.mkdtemp(prefix="idlemap-bench-")
    daemon = start_mount(d)
    try:
        with Workload() as w:
            size = args.size_mib << 20
            addr = w.map("m", args.size_mib, "nothp")
            w.touch("m", 1)
            lo = addr // WORD_VA * WORD_VA
            hi = -(-(addr + size) // WORD_VA) * WORD_VA
            off, nbytes = (lo >> 12) // 8, (hi - lo) >> 15
            path = os.path.join(d, str(w.pid), "idle_bitmap")
            fd = os.open(path, os.O_RDWR)
            buf = bytearray(nbytes)
            ones = b"\xff" * nbytes
            bm = IdleBitmap(w.pid)
            res: dict[str, list[float]] = {k: [] for k in
                                           ("read_direct_s", "read_mount_s", "mark_direct_s", "mark_mount_s")}
            # Warm both paths once (imports, first-time buffers), then measure.
            bm.mark_idle([(lo, hi)])
            os.preadv(fd, [buf], off)
            w.touch("m", 2)                       # half the pages accessed, half idle
            same = True
            for _ in range(args.rounds):
                t, m = timed(lambda: bm.read([(lo, hi)]).rfc_words(lo, hi)[0])
                res["read_direct_s"].append(t)
                t, n = timed(lambda: os.preadv(fd, [buf], off))
                res["read_mount_s"].append(t)
                same &= n == nbytes and np.array_equal(np.frombuffer(buf, np.uint64), m)
            for _ in range(args.rounds):
                res["mark_direct_s"].append(timed(lambda: bm.mark_idle([(lo, hi)]))[0])
                res["mark_mount_s"].append(timed(lambda: os.pwrite(fd, ones, off))[0])
            # The whole file, 1 MiB at a time (a tool that does not read maps first).
            big = bytearray(1 << 20)
            t0 = time.perf_counter()
            pos = total = 0
            while True:
                n = os.preadv(fd, [big], pos)
                if n <= 0:
                    break
                pos += n
                total += n
            full_s = time.perf_counter() - t0
            with open(os.path.join(d, str(w.pid), "idle_pages"), "rb") as f:
                t, stream = timed(f.read)
            ext = ip.decode(stream)
            os.close(fd)
            bm.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        os.rmdir(d)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {"schema": SCHEMA, "size_mib": args.size_mib, "rounds": args.rounds, "bitmap_bytes": nbytes,
           "same_bits": bool(same),
           **{k: round(v, 6) for k, v in med.items()},
           "read_ratio": round(med["read_mount_s"] / med["read_direct_s"], 3),
           "mark_ratio": round(med["mark_mount_s"] / med["mark_direct_s"], 3),
           "full_file_bytes": total, "full_file_s": round(full_s, 3),
           "idle_pages_bytes": len(stream), "idle_pages_s": round(t, 6),
           "idle_pages_extents": int(ext.kind.size), "kernel": os.uname().release}
    emit_json(out, one_line=True)
    print(f"\n{'what':34} {'direct(s)':>10} {'mount(s)':>10} {'ratio':>7}")
    print(f"{'read ' + str(args.size_mib) + ' MiB idle_bitmap':34} {med['read_direct_s']:>10.4f} "
          f"{med['read_mount_s']:>10.4f} {out['read_ratio']:>7.2f}")
    print(f"{'mark ' + str(args.size_mib) + ' MiB (write all-ones)':34} {med['mark_direct_s']:>10.4f} "
          f"{med['mark_mount_s']:>10.4f} {out['mark_ratio']:>7.2f}")
    print(f"{'whole 4 GiB idle_bitmap, 1 MiB reads':34} {'':>10} {full_s:>10.3f}")
    print(f"{'whole idle_pages stream':34} {'':>10} {t:>10.4f}   ({len(stream)} bytes, "
          f"{ext.kind.size} extents)")
    print(f"bits identical through both paths: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
