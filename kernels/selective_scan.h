// The selective scan of Mamba (Gu & Dao 2023, Algorithm 2), with mamba_ssm's fusions:
// softplus of Δ + bias, the D skip connection and the silu(z) gate.
// Shape letters: B batch, L length, E channels (d_inner), N state size (d_state).
#pragma once

#include <stdexcept>
#include <string>

#include "kernels/tensor.h"

namespace mr1 {

struct SelectiveScanInputs {
  const Tensor* u = nullptr;           // (B, L, E)  the conv output after silu (xa)
  const Tensor* delta = nullptr;       // (B, L, E)  dt · dt_projᵀ, before bias and softplus
  const Tensor* A = nullptr;           // (E, N)     = −exp(A_log)
  const Tensor* B = nullptr;           // (B, L, N)  input matrix, per token
  const Tensor* C = nullptr;           // (B, L, N)  output matrix, per token
  const Tensor* D = nullptr;           // (E)        skip; may be null
  const Tensor* z = nullptr;           // (B, L, E)  gate; may be null (no gating)
  const Tensor* delta_bias = nullptr;  // (E)        may be null
  bool delta_softplus = true;
  // CUDA only: the pieces of the sequence scanned at once (selective_scan_cuda_pieces in
  // kernels/selective_scan_cuda.h); 0 chooses from the device's size. The results agree to rounding.
  int64_t cuda_pieces = 0;
  // CUDA backward only: the blocks of channels one kernel launch covers (each keeps B·L·N floats of dB and
  // dC parts); 0 chooses as many as fit 512 MiB. The results agree to rounding.
  int64_t cuda_part_blocks = 0;
  // CPU backward only, may be null or undefined: the states the forward kept (its `checkpoints`), so that
  // the backward does not scan the sequence a first time to find them. Ignored on CUDA, whose kernels keep
  // their own, and by a backward with another chunk than kSelectiveScanChunk. The gradients are the same bits.
  const Tensor* checkpoints = nullptr;
};

// Δ[t,e]   = softplus(delta[t,e] + delta_bias[e])                 (or without softplus when off)
// h_t[e,n] = exp(Δ[t,e] · A[e,n]) · h_{t−1}[e,n] + Δ[t,e] · u[t,e] · B[t,n],   h_{−1} = 0
// y[t,e]   = Σ_n h_t[e,n] · C[t,n] + D[e] · u[t,e]
// out      = y ⊙ silu(z)                                          (or y when z is null)
// Returns out (B, L, E); when final_state is given it receives h_{L−1} (B, E, N). When checkpoints is given,
// the CPU stores in it the states h_{t−1} before every kSelectiveScanChunk-th step t (B·E·N·⌈L/chunk⌉ values
// and padding, in the CPU scan's own layout) for SelectiveScanInputs::checkpoints; on CUDA it is left undefined.
Tensor selective_scan_forward(const SelectiveScanInputs& in, Tensor* final_state = nullptr,
                              Tensor* checkpoints = nullptr);

struct SelectiveScanGrads {
  Tensor u;           // (B, L, E)
  Tensor delta;       // (B, L, E)  gradient with respect to delta before bias and softplus
  Tensor A;           // (E, N)
  Tensor B;           // (B, L, N)
  Tensor C;           // (B, L, N)
  Tensor D;           // (E)      undefined when D is null
  Tensor z;           // (B, L, E) undefined when z is null
  Tensor delta_bias;  // (E)      undefined when delta_bias is null
};
// Reverse-time scan. Recomputes the states chunk by chunk from checkpoints taken every
// `chunk` steps, so memory stays O(B·E·N·L/chunk) instead of O(B·E·N·L).
SelectiveScanGrads selective_scan_backward(const Tensor& grad_out, const SelectiveScanInputs& in);

// The backward of a Mamba block's scan, adding the parameters' gradients in place: grad_A_log += dL/dA ⊙ A
// (the gradient of A_log, where A = −exp(A_log)), grad_D += dL/dD, grad_delta_bias += dL/d(delta_bias).
// grad_D and grad_delta_bias are given exactly when D and delta_bias are. Returns the other gradients
// (u, delta, B, C, z), with A, D and delta_bias undefined. The same floats as selective_scan_backward
// followed by those adds; on CUDA the kernels' reduction adds them, with no temporaries or separate launches.
SelectiveScanGrads selective_scan_backward_accumulate(const Tensor& grad_out, const SelectiveScanInputs& in,
                                                      Tensor& grad_A_log, Tensor* grad_D, Tensor* grad_delta_bias);

// The default checkpoint interval of selective_scan_backward.
constexpr int64_t kSelectiveScanChunk = 64;
// The same with a chosen checkpoint interval (chunk >= 1; tests set it small to exercise the recompute).
// The gradients do not depend on it: the recompute repeats the same float operations from exact copies.
// Besides the checkpoints, each of 32 fixed slots of work items keeps O(chunk·N + L) values per block of
// channels, and its sums of the shared gradients (A, D, delta_bias; B and C of the batch rows its items
// touch), added in slot order: the same bits at any thread count.
SelectiveScanGrads selective_scan_backward(const Tensor& grad_out, const SelectiveScanInputs& in, int64_t chunk);

// Throws std::invalid_argument "<op>: input <name> is missing" for the first of u, delta, A, B, C that is
// null or undefined (of SelectiveScanInputs, or of the step's SelectiveScanStepInputs).
template <typename Inputs>
void require_scan_inputs(const Inputs& in, const char* op) {
  const auto absent = [](const Tensor* tensor) { return !tensor || !tensor->defined(); };
  const char* missing = absent(in.u)       ? "u"
                        : absent(in.delta) ? "delta"
                        : absent(in.A)     ? "A"
                        : absent(in.B)     ? "B"
                        : absent(in.C)     ? "C"
                                           : nullptr;
  if (missing) throw std::invalid_argument(std::string(op) + ": input " + missing + " is missing");
}

}  // namespace mr1
