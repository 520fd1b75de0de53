#!/bin/bash
# Set up a machine to develop and test idlemap (Debian bookworm, as root):
# system packages, the Python package with its extras, the test-VM kernel.
# Idempotent and quick when nothing is missing; one line per step, and a
# step's full output only if it fails.
#   PYTHON=python3.11 scripts/setup.sh     (default: python3 on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CACHE=${IDLEMAP_CACHE:-/var/cache/idlemap}
export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp /tmp/idlemap-setup.XXXXXX)
trap 'rm -f "$LOG"' EXIT

# quietly STEP-NAME CMD...: run CMD, show its output only if it fails
quietly() {
    local what=$1; shift
    if ! "$@" > "$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "setup: $what failed" >&2
        exit 1
    fi
}

# qemu and busybox: the test VM (busybox is its fast PID 1 shell);
# gcc: tests compile small workload helpers; fuse3: idlemap's FUSE view.
PACKAGES=(qemu-system-x86 busybox-static gcc fuse3 libfuse3-dev pkg-config prometheus)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    quietly "apt-get update" apt-get update
    quietly "apt-get install" apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "setup: system packages present"
fi

# pip install -e takes ~10 s even when nothing changed, so remember the
# pyproject.toml it was done for, per interpreter.
stamp=$CACHE/setup/pip-$( { cat pyproject.toml; "$PYTHON" -c 'import sys; print(sys.prefix)'; pwd; } |
                          sha256sum | cut -c1-16)
if [ -e "$stamp" ] && "$PYTHON" -c 'import idlemap, sys; sys.exit(not idlemap.__file__.startswith(sys.argv[1]))' \
        "$PWD/src/" 2> /dev/null; then
    echo "setup: python package installed"
else
    echo "setup: pip install -e .[test,plot,fuse,exporter,tui]"
    if ! "$PYTHON" -m pip install -q -e '.[test,plot,fuse,exporter,tui]' > "$LOG" 2>&1; then
        # pyfuse3 builds against libfuse3 and is the extra most likely to
        # fail; everything but the FUSE view works without it.
        echo "setup: warning: installing with the fuse extra failed; retrying without pyfuse3" >&2
        quietly "pip install" "$PYTHON" -m pip install -q -e '.[test,plot,exporter,tui]'
    fi
    mkdir -p "$(dirname "$stamp")"
    touch "$stamp"
fi

# (--path may itself install the kernel source package, to learn its version)
kernel=$(bash src/idlemap/testvm/build-kernel.sh --path 2> "$LOG") || { cat "$LOG" >&2; exit 1; }
if [ -s "$kernel" ]; then
    echo "setup: test-VM kernel present"
else
    echo "setup: building the test-VM kernel (once, ~5 min)"
    mkdir -p "$CACHE"
    # the same lock as idlemap.testvm.kernel_image(): one build at a time
    quietly "kernel build" flock "$CACHE/kernel.lock" bash src/idlemap/testvm/build-kernel.sh
fi
