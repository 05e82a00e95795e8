#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test (Catch2 through CTest,
# including the cross-check of `mamba-r1 forward` against the NumPy reference).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure --parallel "$(nproc)" "$@"
