// CUDA launchers of the step-mode (recurrent inference) ops of the Mamba mixer. Raw device pointers;
// plain C++ header. Shape letters: B batch, L length, E channels, N state size, K kernel width.
#pragma once

#include <cstdint>

namespace mr1 {

// y (B, E) = bias + Σ_{k<K−1} weight[e, k] · conv_state[b, e, k] + weight[e, K−1] · x; conv_state
// (B, E, K−1) shifted left by one with x appended. weight (E, K), bias (E).
void causal_conv1d_step_cuda(float* conv_state, const float* x, const float* weight, const float* bias, float* y,
                             int64_t B, int64_t E, int64_t K, void* stream);

// state (B, E, K−1)[b, e, k] = x (B, L, E)[b, lengths[b] − (K−1) + k, e], 0 before the sequence start.
// lengths: B device values in [1, L].
void causal_conv1d_final_state_cuda(const float* x, const int64_t* lengths, float* state, int64_t B, int64_t L,
                                    int64_t E, int64_t K, void* stream);

// One step of the selective scan; ssm_state (B, E, N) updated in place, out (B, E). D, z, delta_bias
// may be null. Inputs as SelectiveScanStepInputs.
struct SelectiveScanStepPointers {
  const float* u;           // (B, E)
  const float* delta;       // (B, E)
  const float* A;           // (E, N)
  const float* B;           // (B, N)
  const float* C;           // (B, N)
  const float* D;           // (E) or null
  const float* z;           // (B, E) or null
  const float* delta_bias;  // (E) or null
  bool delta_softplus;
};
void selective_scan_step_cuda(float* ssm_state, const SelectiveScanStepPointers& in, float* out, int64_t B, int64_t E,
                              int64_t N, void* stream);

}  // namespace mr1
