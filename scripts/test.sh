#!/bin/bash
# Run idlemap's tests: the host suite, then the vm suite inside one test VM
# (a kernel with page_idle, DAMON vaddr, soft-dirty, 2 NUMA nodes...), then
# kmod-stock: idlemap's module on Debian's stock kernels, which have no
# page_idle, 6.1 and 6.12, one short VM each (tests/system/test_kmod_stock.py,
# test_kmod_hugetlb.py and test_advise_stock.py; ~35 s each, plus ~15 s once per kernel to fetch
# it and its headers); kmod-stock-6.1 / kmod-stock-6.12 run one of them.
# kmod-debug, not part of all (10-13 min: it would nearly double the ~13 min
# of all): every kmod test and the fuzzer of /dev/idlemap, for
# IDLEMAP_FUZZ_SECONDS (default 300), on a debug build of the test kernel
# (KASAN, PROVE_LOCKING, DEBUG_VM, DEBUG_ATOMIC_SLEEP, DEBUG_LIST; built
# once, ~10 min on 2 cores); any splat in the kernel log fails the test.
#   scripts/test.sh [all|host|vm|kmod-stock|kmod-stock-6.1|kmod-stock-6.12|kmod-debug] [-- PYTEST-ARGS...]
# Runs scripts/setup.sh first.  Ends with one line "N passed, N failed,
# N skipped" and exits non-zero if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=all
case ${1:-} in all|host|vm|kmod-stock|kmod-stock-6.1|kmod-stock-6.12|kmod-debug) phase=$1; shift ;; esac
[ "${1:-}" = "--" ] && shift
[ "${1:-}" = "" ] || [ "${1#-}" != "$1" ] || { echo "usage: $0 [all|host|vm|kmod-stock|kmod-stock-6.1|kmod-stock-6.12|kmod-debug] [-- PYTEST-ARGS...]" >&2; exit 2; }

bash scripts/setup.sh || exit 1
PYTHON=${PYTHON:-python3}
# the interpreter itself, not a pyenv shim (a shim costs seconds per start in the VM)
PY=$("$PYTHON" -c 'from idlemap.testvm import real_python; print(real_python())') || exit 1
OUT=$(mktemp -d /tmp/idlemap-test.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
failed=0

# pytest exits 5 when it collects nothing; a phase with no tests yet is fine.
check() { [ "$1" = 0 ] || [ "$1" = 5 ] || failed=1; }

if [ "$phase" = all ] || [ "$phase" = host ]; then
    echo "== host tests"
    "$PY" -m pytest tests -m "not vm and not kmod_stock and not kmod_debug" -q --junitxml="$OUT/host.xml" "$@"
    check $?
fi

if [ "$phase" = all ] || [ "$phase" = vm ]; then
    echo "== vm tests (one VM: 3072 MiB, 2 CPUs, 2 NUMA nodes)"
    start=$SECONDS
    # idlemap's kernel module, built here against the VM kernel's tree (~2 s;
    # ~28 s under TCG): the VM finds it in the cache it sees read-only.  If
    # this fails, the kmod tests build it in the VM and report why.
    "$PY" -c 'from idlemap import kmodbuild; kmodbuild.build(kmodbuild.vm_kernel_tree())' \
        >/dev/null 2>&1 || echo "note: building kmod/ on the host failed; the VM tests will try"
    # PYTEST_DISABLE_PLUGIN_AUTOLOAD: importing every installed plugin takes
    # pytest's start from ~1 s to ~9 s under TCG.  $OUT is shared read-write,
    # so the junit report comes back.
    "$PY" -m idlemap.testvm --mem 3072 --cpus 2 --numa 2 --rw "$OUT" \
        --env IDLEMAP_IN_VM=1 --env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -- \
        "$PY" -m pytest tests -m vm -q --junitxml="$OUT/vm.xml" "$@"
    check $?
    echo "vm phase: $((SECONDS - start)) s including the boot"
fi

case $phase in
all|kmod-stock) stock_series="6.1 6.12" ;;
kmod-stock-*) stock_series=${phase#kmod-stock-} ;;
*) stock_series= ;;
esac
for series in $stock_series; do
    echo "== kmod-stock $series tests (Debian's stock $series kernel, no page_idle; one VM: 3072 MiB, 2 CPUs)"
    start=$SECONDS
    # The newest linux-image-6.1.0-N-amd64 / linux-image-6.12.N+deb12-amd64
    # with matching headers: fetched once (~15 s), then cached; its
    # initramfs is built here too.
    if stock=$("$PY" -c 'import sys; from idlemap.testvm.stock import stock_dir
print(stock_dir(sys.argv[1], progress=lambda line: print(line, file=sys.stderr)))' "$series"); then
        kdir=$("$PY" -c 'import sys; from pathlib import Path; from idlemap.testvm.stock import build_tree
print(build_tree(Path(sys.argv[1])))' "$stock")
        # The module, built on the host against the stock headers (~2 s): the
        # guest finds it in the cache it sees read-only.
        "$PY" -m idlemap kmod build --kdir "$kdir" >/dev/null 2>&1 ||
            echo "note: building kmod/ against $kdir failed; the test will try in the VM"
        # 3072 MiB with a 1 GiB hugetlb page reserved at boot: allocating one
        # at run time needs a free aligned 1 GiB run, which 6.12 did not
        # always find (CI, twice); the test frees it when done.
        "$PY" -m idlemap.testvm --kernel "stock-$series" --mem 3072 --cpus 2 --rw "$OUT" \
            --kernel-arg hugepagesz=1G --kernel-arg hugepages=1 \
            --env IDLEMAP_IN_STOCK_VM=1 --env IDLEMAP_STOCK_DIR="$stock" \
            --env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -- \
            "$PY" -m pytest tests/system/test_kmod_stock.py tests/system/test_kmod_hugetlb.py \
            tests/system/test_advise_stock.py -m kmod_stock -q -s --junitxml="$OUT/kmod-stock-$series.xml" "$@"
        check $?
    else
        echo "kmod-stock $series: Debian's stock kernel could not be fetched (see above)"
        failed=1
    fi
    echo "kmod-stock $series phase: $((SECONDS - start)) s including the package check, module build and boot"
done

if [ "$phase" = kmod-debug ]; then
    echo "== kmod-debug tests (the debug test kernel: KASAN, lockdep, DEBUG_VM...; one VM: 4096 MiB, 2 CPUs, 2 NUMA nodes)"
    start=$SECONDS
    # The debug kernel (build-kernel.sh --debug): built once, ~10 min on 2
    # cores, then cached under its own key; release 6.1.N-debug.
    if "$PY" -c 'import sys; from idlemap.testvm import kernel_image
kernel_image(debug=True, progress=lambda line: print(line, file=sys.stderr))' >/dev/null; then
        # The module, built on the host against the debug tree (lockdep and
        # KASAN change the kernel's structures: never the plain tree's build).
        "$PY" -c 'from idlemap import kmodbuild; kmodbuild.build(kmodbuild.vm_kernel_tree(debug=True))' \
            >/dev/null 2>&1 || echo "note: building kmod/ against the debug tree failed; the VM tests will try"
        # Every kmod test file that runs in the test VM; test_kmod_debug.py
        # first (the checkers are armed, the boot log is clean).
        kmod_files=$(ls tests/system/test_kmod_*.py | grep -v -e /test_kmod_debug.py -e /test_kmod_stock.py)
        "$PY" -m idlemap.testvm --kernel debug --mem 4096 --cpus 2 --numa 2 --timeout 5400 --rw "$OUT" \
            --env IDLEMAP_IN_VM=1 --env IDLEMAP_DEBUG_KERNEL=1 --env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
            --env IDLEMAP_FUZZ_SECONDS="${IDLEMAP_FUZZ_SECONDS:-300}" \
            --env IDLEMAP_FUZZ_REPORT="$OUT/fuzz.json" -- \
            "$PY" -m pytest tests/system/test_kmod_debug.py $kmod_files -m "vm or kmod_debug" -q -s \
            --junitxml="$OUT/kmod-debug.xml" "$@"
        check $?
        [ -s "$OUT/fuzz.json" ] && "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("fuzzer: %d calls in %.0f s on %s, outcomes %s; pages seen by its checked walks %s"
      % (r["calls"], r["seconds"], r["kernel"], r["outcomes"], r["pages_seen"]))' \
            "$OUT/fuzz.json"
    else
        echo "kmod-debug: the debug test kernel could not be built (see above)"
        failed=1
    fi
    echo "kmod-debug phase: $((SECONDS - start)) s including the module build and boot"
fi

"$PY" - "$OUT" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

tests = failed = skipped = 0
for path in sorted(Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
print(f"{tests - failed - skipped} passed, {failed} failed, {skipped} skipped")
EOF
exit $failed
