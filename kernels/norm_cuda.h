// CUDA launchers of RMSNorm and LayerNorm over the last axis. Raw device pointers; plain C++ header.
// Shape letters: T rows (tokens), D features.
#pragma once

#include <cstdint>

namespace mr1 {

// y (T, D) = x / √(mean(x²) + eps) · weight;  inv_rms (T). With delta, the norm is of sum = x + delta,
// which is written to sum (T, D).
void rmsnorm_forward_cuda(const float* x, const float* weight, float* y, float* inv_rms, int64_t T, int64_t D,
                          void* stream, const float* delta = nullptr, float* sum = nullptr);
// The gradients are added to grad_x (T, D) and grad_weight (D)
void rmsnorm_backward_cuda(const float* grad_y, const float* x, const float* weight, const float* inv_rms,
                           float* grad_x, float* grad_weight, int64_t T, int64_t D, void* stream);

// y (T, D) = (x − mean) / √(var + eps) · weight + bias;  mean, inv_std (T). With delta, of sum = x + delta,
// which is written to sum (T, D).
void layernorm_forward_cuda(const float* x, const float* weight, const float* bias, float* y, float* mean,
                            float* inv_std, int64_t T, int64_t D, void* stream, const float* delta = nullptr,
                            float* sum = nullptr);
// The gradients are added to grad_x (T, D), grad_weight and grad_bias (D)
void layernorm_backward_cuda(const float* grad_y, const float* x, const float* weight, const float* mean,
                             const float* inv_std, float* grad_x, float* grad_weight, float* grad_bias, int64_t T,
                             int64_t D, void* stream);

}  // namespace mr1
