#!/bin/bash
# Fetch Debian 12's stock kernel for the test VM: the newest
# linux-image-6.1.0-N-amd64 whose linux-headers-6.1.0-N-amd64 is also in the
# package source.  The stock kernel has no CONFIG_IDLE_PAGE_TRACKING: it is
# where idlemap's kernel module (kmod/) must stand in for page_idle.
#
#   headers: apt-get install linux-headers-REL (lands in /usr/src, as on any
#            Debian machine; `idlemap kmod build --kdir` builds against it,
#            and the guest, whose root is the host's "/", sees it too);
#   image:   apt-get download + dpkg-deb -x into the cache, NOT installed:
#            installing it would pull initramfs-tools, udev and a systemd
#            upgrade into the host and write /boot, none of which the VM needs.
# Cached under $IDLEMAP_CACHE (default /var/cache/idlemap)/stock/REL/:
#   vmlinuz, config, release, modules/NAME.ko (only those the VM's
#   initramfs loads, decompressed) and modules.order (their load order)
#   stock-kernel.sh            fetch if needed, print the cache directory
#   stock-kernel.sh --path     print it if it is complete, else fail (no install)
# IDLEMAP_STOCK_RELEASE=6.1.0-N-amd64 pins a release.
set -euo pipefail
CACHE=${IDLEMAP_CACHE:-/var/cache/idlemap}/stock
export DEBIAN_FRONTEND=noninteractive
# What the VM's initramfs loads (stock-initramfs, in idlemap.testvm.stock),
# dependencies included: virtio PCI, 9p (the root), overlayfs (the writable
# /tmp, /root...), the virtio console (the command's output), virtio-rng.
WANT="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache
9pnet 9pnet_virtio 9p overlay virtio_console virtio-rng"

complete() {    # complete DIR: a finished extract whose headers are installed
    [ -s "$1/vmlinuz" ] && [ -s "$1/release" ] &&
        [ -f "/usr/src/linux-headers-$(cat "$1/release")/Makefile" ]
}

pick_cached() {  # the newest complete cache entry (no apt-get on a warm machine)
    local d best=
    for d in $(ls -d "$CACHE"/6.1.0-*-amd64 2>/dev/null | sort -V); do
        complete "$d" && best=$d
    done
    [ -n "$best" ] && echo "$best"
}

if [ -n "${IDLEMAP_STOCK_RELEASE:-}" ]; then
    dir=$CACHE/$IDLEMAP_STOCK_RELEASE
    if complete "$dir"; then echo "$dir"; exit 0; fi
else
    if dir=$(pick_cached); then echo "$dir"; exit 0; fi
fi
if [ "${1:-}" = "--path" ]; then
    echo "stock-kernel: not fetched yet (run $0)" >&2
    exit 1
fi

# Serialised: two runs would download 70 MB twice and race on the cache.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

if [ -n "${IDLEMAP_STOCK_RELEASE:-}" ]; then
    rel=$IDLEMAP_STOCK_RELEASE
else
    echo "stock-kernel: apt-get update" >&2
    apt-get update -qq >&2
    imgs=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' |
           sed 's/^linux-image-//' | sort -u)
    hdrs=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' |
           sed 's/^linux-headers-//' | sort -u)
    rel=$(comm -12 <(echo "$imgs") <(echo "$hdrs") | sort -V | tail -n 1)
    [ -n "$rel" ] || { echo "stock-kernel: no linux-image-6.1.0-*-amd64 with matching headers in the package source" >&2; exit 1; }
fi
dir=$CACHE/$rel
if complete "$dir"; then echo "$dir"; exit 0; fi
echo "stock-kernel: fetching linux-image-$rel and installing linux-headers-$rel (~100 MB)" >&2

need=()
for p in "linux-headers-$rel" gcc make xz-utils; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/idlemap-stock.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"     # apt-get download runs as _apt
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "linux-image-$rel" >&2)
dpkg-deb -x "$work"/linux-image-"$rel"_*.deb "$work/x"
mods=$work/x/lib/modules/$rel
out=$dir.tmp
rm -rf "$out"
mkdir -p "$out/modules"
cp "$work/x/boot/vmlinuz-$rel" "$out/vmlinuz"
cp "$work/x/boot/config-$rel" "$out/config"
echo "$rel" > "$out/release"

# The wanted modules and everything they depend on, copied decompressed
# (busybox insmod reads plain ELF only), and load-order: the package ships
# no modules.dep (depmod makes it at install time), so the dependencies come
# from each module's own .modinfo "depends=".
python3 - "$mods" "$out" $WANT <<'PY' >&2
import gzip, lzma, os, sys
mods, out, want = sys.argv[1], sys.argv[2], sys.argv[3:]
def plain(path):
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        sys.exit(f"stock-kernel: {path}: zstd-compressed modules are not handled")
    return data
files = {}
for root, _, names in os.walk(os.path.join(mods, "kernel")):
    for n in names:
        if ".ko" in n:
            files[n.split(".ko")[0].replace("-", "_")] = os.path.join(root, n)
builtin = set()
try:
    for line in open(os.path.join(mods, "modules.builtin")):
        builtin.add(os.path.basename(line.strip()).split(".ko")[0].replace("-", "_"))
except OSError:
    pass
order, seen = [], set()
def add(name):
    name = name.replace("-", "_")
    if name in seen or name in builtin:
        return
    if name not in files:
        sys.exit(f"stock-kernel: module {name} is neither in the package nor built in")
    seen.add(name)
    data = plain(files[name])
    i = data.find(b"\0depends=")
    deps = data[i + 9:data.index(b"\0", i + 1)].decode() if i >= 0 else ""
    for d in filter(None, deps.split(",")):
        add(d)
    with open(os.path.join(out, "modules", name + ".ko"), "wb") as f:
        f.write(data)
    order.append(name)
for m in want:
    add(m)
with open(os.path.join(out, "modules.order"), "w") as f:
    f.write("".join(n + "\n" for n in order))
print("stock-kernel: initramfs modules, in load order: " + " ".join(order))
PY
rm -rf "$dir"
mv "$out" "$dir"
echo "stock-kernel: $rel cached in $dir" >&2
echo "$dir"
