#!/usr/bin/env bash
# Every test under AddressSanitizer (leaks included) and UndefinedBehaviorSanitizer (no recovery: the
# first report fails its test), in build-sanitize/: the CPU code, and the CUDA kernels on the CPU
# emulator of CUDA threads with EMU_EXACT=1 (each device buffer a malloc of exactly its size, so a
# kernel that reads or writes past its end is reported). CUDA itself is left out (nvcc's objects are
# not instrumented). Extra arguments go to ctest, e.g. -R emulated. On 2 cores: 13 minutes from
# nothing, 4 of them the tests. With --validate, also `mamba-r1-emulated validate` (every op and the
# model on the emulated device; 8.5 more minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
validate=0
if [ "${1:-}" = "--validate" ]; then
  validate=1
  shift
fi
"$root/scripts/setup.sh"
cd "$root"
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMAMBA_R1_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" >/dev/null
cmake --build build-sanitize --parallel "$(nproc)"
cd build-sanitize
# ASan warns once per emulated process that fibers (makecontext/swapcontext) may cause false positives.
EMU_EXACT=1 ctest --output-on-failure --parallel "$(nproc)" "$@"
if [ "$validate" = 1 ]; then
  EMU_EXACT=1 ./mamba-r1-emulated validate
fi
