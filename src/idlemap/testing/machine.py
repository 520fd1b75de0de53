"""The machine around a workload: swap on zram and a fresh cgroup v2 group
with the memory controller.

The system tests and the benchmarks need the same two set-ups (reclaim
needs somewhere to put anonymous pages; ``reclaim --cgroup`` and
``advise --cgroup`` need a group of their own), and a bench is only
comparable with the tests if it runs on the machine the tests checked, so
both come from here.  Both change the whole machine and need root: they
are for the test VM (and a bench's ``--here`` run on a machine you own),
and both undo themselves on the way out.

A kernel without what a set-up needs raises ``MachineLacks`` naming the
``CONFIG_`` option, before anything is changed: a test skips on it, a
bench stops with the sentence.  Standard library only (a workload child
imports this package; see tests/unit/test_layering.py).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

CG_ROOT = "/sys/fs/cgroup"
ZRAM = "/sys/block/zram0"
ZRAM_DEVICE = "/dev/zram0"
ZRAM_HOT_ADD = "/sys/class/zram-control/hot_add"


class MachineLacks(RuntimeError):
    """The kernel lacks a feature a set-up needs; the message names its CONFIG_ option."""


@contextlib.contextmanager
def zram_swap(size: str = "1G") -> Iterator[str]:
    """Swap on /dev/zram0 of ``size`` (a zram disksize: "1G"); yields the
    device.  zram because the test VM has no disk to swap to, and swapped
    pages stay in RAM, compressed, so paging out and back is quick and the
    same on every run.  On the way out: swapoff and a reset, which frees
    the compressed pages."""
    if not os.path.exists(ZRAM):
        # zram built in with num_devices=0, or the module loaded without
        # devices: reading hot_add creates the next one (zram0 here).
        if not os.path.exists(ZRAM_HOT_ADD):
            raise MachineLacks("no zram: CONFIG_ZRAM is not set")
        with open(ZRAM_HOT_ADD) as f:
            f.read()
    with open(f"{ZRAM}/disksize", "w") as f:
        f.write(size)
    subprocess.run(["mkswap", ZRAM_DEVICE], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["swapon", ZRAM_DEVICE], check=True)
    try:
        yield ZRAM_DEVICE
    finally:
        # check=False: the reset below must run even if swapoff fails,
        # and a failing teardown must not hide the body's own error.
        subprocess.run(["swapoff", ZRAM_DEVICE], check=False)
        with open(f"{ZRAM}/reset", "w") as f:
            f.write("1")


@contextlib.contextmanager
def cgroup(name: str) -> Iterator[str]:
    """A fresh cgroup ``idlemap-NAME-PID`` under /sys/fs/cgroup with the
    memory controller enabled for it; yields its path.  The caller moves
    its processes in (write a PID to cgroup.procs) and must have ended
    them before leaving: a cgroup with members cannot be removed."""
    if not os.path.exists(f"{CG_ROOT}/cgroup.controllers"):
        # The test VM's init mounts nothing there; a systemd host has it.
        os.makedirs(CG_ROOT, exist_ok=True)
        subprocess.run(["mount", "-t", "cgroup2", "none", CG_ROOT], check=True)
    with open(f"{CG_ROOT}/cgroup.controllers") as f:
        if "memory" not in f.read().split():
            raise MachineLacks("no memory controller in cgroup v2: CONFIG_MEMCG is not set")
    # Children get memory.* files only if their parent delegates the controller.
    with open(f"{CG_ROOT}/cgroup.subtree_control", "w") as f:
        f.write("+memory")
    path = f"{CG_ROOT}/idlemap-{name}-{os.getpid()}"
    os.mkdir(path)
    try:
        yield path
    finally:
        # A member killed just now still counts until its exit gets past
        # freeing its memory (do_exit: exit_mm, then cgroup_exit), which for
        # hundreds of MiB, some on zram, takes a moment: rmdir says EBUSY
        # until then.  Give it up to 5 s, then leave the group behind rather
        # than fail the run over it.
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)
