#!/bin/bash
# Set up this machine (scripts/setup.sh) and run the embedded default:
# `idlemap demo` -- a workload with a known hot set, measured against the
# truth.  On a kernel without page_idle the demo runs in the test VM.
#   scripts/demo.sh [DEMO-OPTIONS...]      e.g. --size-mib 512 --hot-mib 64
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m idlemap demo "$@"
