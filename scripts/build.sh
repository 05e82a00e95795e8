#!/usr/bin/env bash
# Configures and builds Mamba R1 (Release, native CPU flags, OpenMP; CUDA when nvcc is found)
# into build/. Extra arguments go to CMake's configure step, e.g. -DMAMBA_R1_CUDA=OFF. With
# MAMBA_R1_BUILD_TARGET set (scripts/run.sh: mamba-r1), only that target and what it needs are built.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# nvcc is often installed outside PATH; let CMake find it there.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build --parallel "$(nproc)" ${MAMBA_R1_BUILD_TARGET:+--target "$MAMBA_R1_BUILD_TARGET"}
