// The top-k selection of one row, shared by the CPU's top_k (kernels/routing.cpp) and the CUDA
// top_k_kernel (kernels/routing_cuda.cu), so that both choose the same experts. Plain C++ that nvcc also
// compiles for the device.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MR1_HOST_DEVICE __host__ __device__
#else
#define MR1_HOST_DEVICE
#endif

namespace mr1 {

// chosen[r], value[r] for r < k: the k largest of row[0 .. X), best first, by repeated arg-max (k is
// small); a strict '>' keeps the lowest index on ties.
MR1_HOST_DEVICE inline void top_k_row(const float* row, int64_t X, int64_t k, int32_t* chosen, float* value) {
  for (int64_t r = 0; r < k; ++r) {
    int32_t best = -1;
    for (int32_t j = 0; j < X; ++j) {
      bool taken = false;
      for (int64_t q = 0; q < r; ++q) taken = taken || chosen[q] == j;
      if (taken) continue;
      if (best < 0 || row[j] > row[best]) best = j;
    }
    chosen[r] = best;
    value[r] = row[best];
  }
}

}  // namespace mr1
