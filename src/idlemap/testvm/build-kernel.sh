#!/bin/bash
# Build idlemap's test-VM kernel from Debian's linux-source-6.1 package:
# tinyconfig + kernel.fragment, all built in.  About 5 minutes on 2 cores and
# 1.6 GB of scratch the first time; the result is cached under
#   $IDLEMAP_CACHE (default /var/cache/idlemap)/kernel/<key>/bzImage
# where <key> hashes the fragment and the source package version, so a
# changed fragment or a new source package builds again and nothing else does.
#   build-kernel.sh            build if needed, print the bzImage path
#   build-kernel.sh --path     print the path the cache would use (no build)
#   build-kernel.sh --debug [--path]
#       the debug kernel: kernel.fragment plus kernel-debug.fragment (KASAN,
#       PROVE_LOCKING, DEBUG_VM...), its own key; ~10 min on 2 cores (9.5 measured)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${IDLEMAP_CACHE:-/var/cache/idlemap}
SRC_PKG=linux-source-6.1
FRAGMENTS=("$HERE/kernel.fragment")
if [ "${1:-}" = "--debug" ]; then FRAGMENTS+=("$HERE/kernel-debug.fragment"); shift; fi
export DEBIAN_FRONTEND=noninteractive

need=()
for p in "$SRC_PKG" gcc make flex bison bc libelf-dev xz-utils; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "build-kernel: installing ${need[*]}" >&2
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
SRC_VER=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
# (the plain kernel's key is unchanged by the debug fragment's existence)
KEY=$( { cat "${FRAGMENTS[@]}"; echo "$SRC_PKG $SRC_VER"; } | sha256sum | cut -c1-16)
OUT=$CACHE/kernel/$KEY
if [ "${1:-}" = "--path" ]; then echo "$OUT/bzImage"; exit 0; fi
if [ -s "$OUT/bzImage" ]; then echo "$OUT/bzImage"; exit 0; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/idlemap-kbuild.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "build-kernel: building $SRC_PKG $SRC_VER (cache key $KEY${FRAGMENTS[1]:+, debug}) on $(nproc) cores" >&2
tar -xf /usr/src/$SRC_PKG.tar.xz -C "$WORK"
cd "$WORK"/$SRC_PKG
make -s tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}" >/dev/null
make -s olddefconfig >&2
missing=0
while read -r line; do
    case $line in
        CONFIG_*=*) grep -qx "$line" .config || { echo "build-kernel: $line did not take effect" >&2; missing=1; } ;;
    esac
done < <(cat "${FRAGMENTS[@]}")
[ $missing = 0 ] || exit 1
make -s -j"$(nproc)" bzImage modules >&2
mkdir -p "$OUT.tmp"
cp arch/x86/boot/bzImage "$OUT.tmp/bzImage"
cp .config "$OUT.tmp/config"
make -s kernelversion > "$OUT.tmp/version"
# Keep the configured tree (less its object files) so out-of-tree modules
# (idlemap's kmod/) build against exactly this kernel: make -C $OUT/build M=...
find . \( -name '*.o' -o -name 'vmlinux*' -o -name '*.a' \) -type f -delete
cd ..; mv "$SRC_PKG" "$OUT.tmp/build"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "$OUT/bzImage"
