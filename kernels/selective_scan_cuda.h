// CUDA launchers of the selective scan, forward and backward (kernels/selective_scan.cu). Raw device
// pointers; plain C++ header. Shape letters: B batch, L length, E channels (d_inner), N state size.
#pragma once

#include <cstdint>

namespace mr1 {

// The largest N the CUDA kernels support (each channel's state spread over up to 32 lanes of 8 states).
constexpr int64_t kSelectiveScanCudaMaxState = 256;

// Raw views of SelectiveScanInputs; absent optional inputs are null.
struct SelectiveScanPointers {
  const float* u = nullptr;           // (B, L, E)
  const float* delta = nullptr;       // (B, L, E)
  const float* A = nullptr;           // (E, N)
  const float* B = nullptr;           // (B, L, N)
  const float* C = nullptr;           // (B, L, N)
  const float* D = nullptr;           // (E) or null
  const float* z = nullptr;           // (B, L, E) or null
  const float* delta_bias = nullptr;  // (E) or null
  bool delta_softplus = true;
};

// out (B, L, E); final_state (B, E, N) or null.
void selective_scan_forward_cuda(const SelectiveScanPointers& in, float* out, float* final_state, int64_t B, int64_t L,
                                 int64_t E, int64_t N, void* stream);

// Gradients; every output is zero-filled by the caller (dA, dB, dC, dD and d_delta_bias are added to).
// grad_D, grad_z and grad_delta_bias may be null exactly when D, z and delta_bias are.
struct SelectiveScanGradPointers {
  float* u = nullptr;           // (B, L, E)
  float* delta = nullptr;       // (B, L, E)
  float* A = nullptr;           // (E, N)
  float* B = nullptr;           // (B, L, N)
  float* C = nullptr;           // (B, L, N)
  float* D = nullptr;           // (E)
  float* z = nullptr;           // (B, L, E)
  float* delta_bias = nullptr;  // (E)
};
void selective_scan_backward_cuda(const float* grad_out, const SelectiveScanPointers& in,
                                  const SelectiveScanGradPointers& grads, int64_t B, int64_t L, int64_t E, int64_t N,
                                  void* stream);

}  // namespace mr1
