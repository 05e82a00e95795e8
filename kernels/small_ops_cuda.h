// CUDA launchers of the small ops. Raw device pointers; plain C++ header. Shape letters: T rows, F features.
#pragma once

#include <cstdint>

namespace mr1 {

// y[i] = −exp(x[i])
void negative_exp_cuda(const float* x, float* y, int64_t n, void* stream);
// out[t] = Σ_f a[t, f] · b[t, f]     a, b (T, F); out (T) on the device
void row_dot_cuda(const float* a, const float* b, float* out, int64_t T, int64_t F, void* stream);
// y[t, f] = scales[t] · x[t, f]      x, y (T, F); scales (T) on the device
void scale_rows_cuda(const float* x, const float* scales, float* y, int64_t T, int64_t F, void* stream);

}  // namespace mr1
