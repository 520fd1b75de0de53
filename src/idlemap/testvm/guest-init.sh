#!/bin/sh
# PID 1 of idlemap's test VM.  idlemap.testvm.run() boots the kernel with
#   init=/bin/busybox -- sh THIS_FILE     (init=/bin/sh -- THIS_FILE without busybox)
# so this file needs no exec bit.  The root filesystem is the host's "/" over
# 9p, read-only: the host's binaries, its Python and the checkout are all at
# their usual paths.  The host also shares a per-run directory (9p tag
# "idlemap-run", mounted at /run/idlemap-vm) that holds
#   mounts   one line per extra mount, in order:
#              "overlay - DIR"  writable view of host DIR, writes thrown away
#              "rw TAG DIR"     9p share TAG at DIR, writes reach the host
#   cmd.sh   the command: exports, cd, exec; sourced in a subshell
# and receives "rc" (the command's exit status) or "error" (one sentence on
# why the command could not be started).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8
RUN=/run/idlemap-vm
P9="trans=virtio,version=9p2000.L,msize=262144"

# Under TCG every exec of a dynamically linked host binary costs ~0.1 s; the
# static busybox (if installed) does the mounts for much less.
bb=
[ -x /bin/busybox ] && bb=/bin/busybox

stop_vm() {
    sync
    # Reset at once; qemu runs with -no-reboot, so a reset makes it exit.
    # If even that fails, PID 1 exiting panics the kernel, and panic=-1
    # resets too.
    echo b > /proc/sysrq-trigger
    exit 1
}

fail() {
    echo "$*" > "$RUN/error"
    stop_vm
}

$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
# DEVTMPFS_MOUNT normally mounts /dev already.  (A plain [ -c /dev/null ]
# would not tell: the 9p root shows the host's /dev.)
have_dev=0
while read -r _ mnt fstype _; do
    [ "$mnt $fstype" = "/dev devtmpfs" ] && have_dev=1
done < /proc/mounts
[ $have_dev = 1 ] || $bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts -o gid=5,mode=620,ptmxmode=0666 devpts /dev/pts
$bb mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$bb mount -t tmpfs -o mode=755 tmpfs /run
$bb mount -t debugfs debugfs /sys/kernel/debug
# damo records through tracepoints and looks for tracefs here
$bb mount -t tracefs tracefs /sys/kernel/tracing
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
# No network, but the loopback: tests talk to local servers (the exporter).
$bb ip link set lo up
$bb mkdir -p $RUN
# Without the run directory nobody could learn the result: stop at once.
$bb mount -t 9p -o $P9 idlemap-run $RUN || stop_vm

# Overlays come first so that a read-write share inside an overlaid
# directory (say /tmp/results) is mounted on top of the overlay, not hidden
# by it; the host writes the lines in that order.
n=0
while read -r kind tag dir; do
    case $kind in
    overlay)
        n=$((n + 1))
        ov=/run/idlemap-ov/$n
        $bb mkdir -p $ov/upper $ov/work
        $bb mount -t overlay -o "lowerdir=$dir,upperdir=$ov/upper,workdir=$ov/work" overlay "$dir" ||
            fail "could not make $dir writable in the VM (overlayfs mount failed)"
        ;;
    rw)
        $bb mount -t 9p -o $P9 "$tag" "$dir" ||
            fail "could not mount the read-write share $dir in the VM"
        ;;
    esac
done < $RUN/mounts

out=/dev/hvc0      # virtio console; the host connects it to its stdout
[ -c $out ] || out=/dev/console
# raw: no "\n" -> "\r\n" translation in the command's output
$bb stty -F $out raw -echo 2>/dev/null

read -r up _ < /proc/uptime
echo "<5>idlemap-vm: command starts at ${up}s of uptime" > /dev/kmsg

(. $RUN/cmd.sh) > $out 2>&1 < /dev/null
echo $? > $RUN/rc
stop_vm
