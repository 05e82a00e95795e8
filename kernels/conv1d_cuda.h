// CUDA launchers of the causal depthwise conv1d, channels last. Raw device pointers; plain C++ header.
// Shape letters: B batch, L length, E channels, K kernel width (any K >= 1).
#pragma once

#include <cstdint>

namespace mr1 {

// y[b, t, e] = bias[e] + Σ_k weight[e, k] · x[b, t − K + 1 + k, e]   (x[b, <0, e] = 0)
// x, y (B, L, E); weight (E, K); bias (E)
void causal_conv1d_forward_cuda(const float* x, const float* weight, const float* bias, float* y, int64_t B, int64_t L,
                                int64_t E, int64_t K, void* stream);

// grad_x (B, L, E) overwritten; the weight and bias gradients (deterministic sums) are added to grad_weight
// (E, K) and grad_bias (E).
void causal_conv1d_backward_cuda(const float* grad_y, const float* x, const float* weight, float* grad_x,
                                 float* grad_weight, float* grad_bias, int64_t B, int64_t L, int64_t E, int64_t K,
                                 void* stream);

}  // namespace mr1
