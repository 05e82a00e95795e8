// CUDA launchers of the linear layer: cuBLAS GEMMs in float32 (TF32 tensor cores when
// cuda::set_tf32(true)). Raw device pointers, row-major. Shape letters: T tokens, I inputs, O outputs.
#pragma once

#include <cstdint>

namespace mr1 {

// y (T, O) = x (T, I) · weightᵀ (O, I) + bias (O); bias may be null.
void linear_forward_cuda(const float* x, const float* weight, const float* bias, float* y, int64_t T, int64_t I,
                         int64_t O, void* stream);

// grad_x (T, I) = grad_y (T, O) · weight (+= with add_input), skipped when grad_x is null;
// grad_weight (O, I) += grad_yᵀ · x;  grad_bias (O) += Σ_t grad_y[t], skipped when grad_bias is null.
void linear_backward_cuda(const float* grad_y, const float* x, const float* weight, float* grad_x, float* grad_weight,
                          float* grad_bias, int64_t T, int64_t I, int64_t O, void* stream, bool add_input = false);

}  // namespace mr1
