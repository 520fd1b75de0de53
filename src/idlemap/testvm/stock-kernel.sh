#!/bin/bash
# Fetch one of Debian 12's stock kernels for the test VM (no
# CONFIG_IDLE_PAGE_TRACKING in either: where idlemap's kernel module, kmod/,
# must stand in for page_idle):
#   6.1   the newest linux-image-6.1.0-N-amd64 whose linux-headers-6.1.0-N-amd64
#         is also in the package source (bookworm's own kernel);
#   6.12  the newest linux-image-6.12.N+deb12-amd64 (or its -unsigned twin,
#         the same kernel without the Secure Boot signature, which appears
#         first) with linux-headers-6.12.N+deb12-amd64 (bookworm-backports/
#         security's newer kernel).
#
#   headers: 6.1: apt-get install linux-headers-REL (lands in /usr/src, as on
#            any Debian machine; `idlemap kmod build --kdir` builds against it,
#            and the guest, whose root is the host's "/", sees it too).
#            6.12: its headers package depends on the image package itself,
#            so installing it would install the kernel on the host: the three
#            packages (headers, -common, linux-kbuild) are downloaded and
#            unpacked into the cache instead; DIR/build is the tree.
#   image:   apt-get download + dpkg-deb -x into the cache, NOT installed:
#            installing it would pull initramfs-tools, udev and a systemd
#            upgrade into the host and write /boot, none of which the VM needs.
# Cached under $IDLEMAP_CACHE (default /var/cache/idlemap)/stock/REL/:
#   vmlinuz, config, release, modules/NAME.ko (only those the VM's
#   initramfs loads, decompressed), modules.order (their load order),
#   modules.want (the list they were chosen from: when WANT below changes,
#   the next run downloads the image again and replaces only the modules),
#   and for 6.12 headers/ and build (the kernel tree to build modules against)
#   stock-kernel.sh [--series 6.1|6.12]          fetch if needed, print the cache directory
#   stock-kernel.sh [--series 6.1|6.12] --path   print it if it is complete, else fail
# IDLEMAP_STOCK_RELEASE=REL pins a release (6.1.0-N-amd64, 6.12.N+deb12-amd64).
set -euo pipefail
CACHE=${IDLEMAP_CACHE:-/var/cache/idlemap}/stock
export DEBIAN_FRONTEND=noninteractive
series=6.1
path_only=
while [ $# -gt 0 ]; do
    case $1 in
    --series) series=${2:-}; shift 2 ;;
    --path) path_only=1; shift ;;
    *) echo "usage: $0 [--series 6.1|6.12] [--path]" >&2; exit 2 ;;
    esac
done
# RE: the release names of the series (as in the package names);
# WANT: what the VM's initramfs loads (idlemap.testvm.stock), with their
# dependencies: virtio PCI, 9p (the root), overlayfs (the writable /tmp,
# /root...), the virtio console (the command's output), virtio-rng.  6.12
# builds the virtio core in and has no separate fscache (netfs took it);
# it also gets zram (CONFIG_ZRAM=m there: swap for reclaim and DAMOS
# pageout, bench/advise.py --damos; its compressors come with its
# depends=, zsmalloc is built in).  Both get kvm_amd (TCG's -cpu max offers
# SVM): a real KVM guest, for the refusal to act on a KVM guest's memory
# read by the module alone (tests/system/test_kmod_stock.py).  The rest
# comes from each module's depends=.
case $series in
6.1)
    RE='6\.1\.0-[0-9]+-amd64'
    WANT="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache
9pnet 9pnet_virtio 9p overlay virtio_console virtio-rng kvm_amd" ;;
6.12)
    RE='6\.12\.[0-9]+\+deb12-amd64'
    WANT="virtio_pci 9pnet_virtio 9p overlay virtio_console virtio-rng zram kvm_amd" ;;
*) echo "stock-kernel: unknown series $series (6.1 or 6.12)" >&2; exit 2 ;;
esac

WANT=$(echo $WANT)      # one line, single spaces: compared with DIR/modules.want

unpacked() {    # unpacked DIR: a finished extract whose headers are there
    [ -s "$1/vmlinuz" ] && [ -s "$1/release" ] &&
        { [ -f "$1/build/Makefile" ] || [ -f "/usr/src/linux-headers-$(cat "$1/release")/Makefile" ]; }
}

complete() {    # complete DIR: unpacked, with the modules of today's WANT
    unpacked "$1" && [ "$(cat "$1/modules.want" 2>/dev/null)" = "$WANT" ]
}

pick_cached() {  # the newest complete cache entry (no apt-get on a warm machine)
    local d best=
    for d in $(ls -d "$CACHE"/* 2>/dev/null | grep -E "/$RE\$" | sort -V); do
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
if [ -n "$path_only" ]; then
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
    names() {   # names PREFIX SUFFIX: the releases of the series with that package
        apt-cache search --names-only "^$1($RE)$2\$" | awk '{print $1}' |
            sed -E "s/^$1//; s/$2\$//" | sort -u
    }
    imgs=$( (names linux-image- ''; names linux-image- -unsigned) | sort -u)
    hdrs=$(names linux-headers- '')
    rel=$(comm -12 <(echo "$imgs") <(echo "$hdrs") | sort -V | tail -n 1)
    [ -n "$rel" ] || { echo "stock-kernel: no linux-image-$series kernel with matching headers in the package source" >&2; exit 1; }
fi
dir=$CACHE/$rel
if complete "$dir"; then echo "$dir"; exit 0; fi
refresh=
if unpacked "$dir"; then
    # Only the module list changed (or predates modules.want): the image
    # again, for its modules; the kernel and the headers stay as they are.
    refresh=1
    echo "stock-kernel: the initramfs module list changed: fetching linux-image-$rel for its modules (~70 MB)" >&2
else
    echo "stock-kernel: fetching linux-image-$rel and the headers (~100 MB)" >&2
fi

need=(gcc make xz-utils)
[ "$series" = 6.1 ] && need+=("linux-headers-$rel")
missing=()
for p in "${need[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/idlemap-stock.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"     # apt-get download runs as _apt
image=linux-image-$rel
# the signed package appears some days after the unsigned one (a referenced name until then)
apt-cache show "$image" 2>/dev/null | grep -q "^Package:" || image=linux-image-$rel-unsigned
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$image" >&2)
dpkg-deb -x "$work"/"$image"_*.deb "$work/x"
mods=$work/x/lib/modules/$rel
out=$dir.tmp
rm -rf "$out"
mkdir -p "$out/modules"
if [ -z "$refresh" ]; then
    cp "$work/x/boot/vmlinuz-$rel" "$out/vmlinuz"
    cp "$work/x/boot/config-$rel" "$out/config"
    echo "$rel" > "$out/release"
fi

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
echo "$WANT" > "$out/modules.want"
if [ -n "$refresh" ]; then
    # In place: new modules/ beside the old, then renamed over it; the
    # initramfs is named by a hash of its modules, so a new one is built.
    rm -rf "$dir/modules.new"
    mv "$out/modules" "$dir/modules.new"
    rm -rf "$dir/modules"
    mv "$dir/modules.new" "$dir/modules"
    mv "$out/modules.order" "$dir/modules.order"
    mv "$out/modules.want" "$dir/modules.want"
    rm -rf "$out"
    echo "stock-kernel: $rel: modules refreshed in $dir" >&2
    echo "$dir"
    exit 0
fi
if [ "$series" = 6.12 ]; then
    # The headers unpacked next to the image: linux-headers-REL's Makefile
    # includes /usr/src/linux-headers-BASE-common/Makefile by absolute path,
    # so it is pointed at the unpacked copy (as it will be after the mv).
    base=${rel%-amd64}
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "linux-headers-$rel" \
        "linux-headers-$base-common" "linux-kbuild-$base" >&2)
    for deb in "$work"/linux-headers-*.deb "$work"/linux-kbuild-*.deb; do
        dpkg-deb -x "$deb" "$out/headers"
    done
    echo "include $dir/headers/usr/src/linux-headers-$base-common/Makefile" \
        > "$out/headers/usr/src/linux-headers-$rel/Makefile"
    ln -s "headers/usr/src/linux-headers-$rel" "$out/build"
fi
rm -rf "$dir"
mv "$out" "$dir"
echo "stock-kernel: $rel cached in $dir" >&2
echo "$dir"
