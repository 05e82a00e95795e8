#!/usr/bin/env bash
# Builds mamba-r1, its tests and the scan bench for one GPU architecture here, where nvcc and the libraries
# are, and copies the three programs into DIR (default: .gpu-prebuilt, ignored by git). A GPU machine with
# little time then runs scripts/gpu_check.sh without building:
#
#   scripts/gpu_prebuild.sh 90                 # here: sm_90 (H100, H200)
#   scripts/device_deps.sh                     # here: the shared libraries the programs load
#   device run: GPU_CHECK_PREBUILT=.gpu-prebuilt scripts/gpu_check.sh, carrying both folders
#
# gpu_check.sh uses the programs only when they start there, and builds otherwise. The CPU code is built for
# x86-64-v3 (AVX2, FMA) instead of this machine's -march=native, so that it runs on another x86-64 processor;
# the programs need a glibc and a libstdc++ at least as new as this machine's.
# Usage: scripts/gpu_prebuild.sh [ARCH (default 90)] [DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="${1:-90}"
out="${2:-$root/.gpu-prebuilt}"
if ! [[ "$arch" =~ ^[0-9]+[af]?$ ]]; then
  echo "gpu_prebuild: ARCH: expected a CUDA architecture such as 90, found '$arch'" >&2
  exit 2
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
build="$root/build-prebuilt-sm$arch"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMAMBA_R1_CUDA=ON -DMAMBA_R1_CUDA_EMULATOR=OFF \
  -DMAMBA_R1_NATIVE=OFF -DCMAKE_CXX_FLAGS="-march=x86-64-v3" -DCMAKE_CUDA_ARCHITECTURES="$arch" >/dev/null
if ! grep -q "^CMAKE_CUDA_COMPILER:.*nvcc" "$build/CMakeCache.txt"; then
  echo "gpu_prebuild: nvcc was not found, so there is no CUDA build to make" >&2
  exit 1
fi
cmake --build "$build" --parallel "$(nproc)" --target mamba-r1 mamba-r1-tests mamba-r1-scan-bench
mkdir -p "$out"
cp "$build/mamba-r1" "$build/mamba-r1-tests" "$build/mamba-r1-scan-bench" "$out/"
echo "sm_$arch, built $(date -u +%Y-%m-%dT%H:%MZ) from $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(
  git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' with uncommitted changes')" >"$out/BUILT"
echo "gpu_prebuild: $(cat "$out/BUILT"); in $out ($(du -sh "$out" | cut -f1))"
