// The single-step ops of recurrent (step-mode) inference of the Mamba mixer: one new token per
// sequence updates a fixed-size state in O(1), and the state a prefill leaves behind.
// Shape letters: B batch, L length, E channels (d_inner), N state size (d_state), K kernel width (d_conv).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

// Causal depthwise conv1d, one step. conv_state (B, E, K−1) holds the inputs of the last K−1 tokens,
// oldest first (zeros before the start of the sequence); x (B, E) is the new token's input.
//   y[b, e] = bias[e] + Σ_{k<K−1} weight[e, k] · conv_state[b, e, k] + weight[e, K−1] · x[b, e]
//   conv_state[b, e, :] ← (conv_state[b, e, 1:], x[b, e])
// which is causal_conv1d_forward at the new position, summed in the same order. weight (E, 1, K) as
// stored or (E, K), bias (E). Returns y (B, E); updates conv_state in place.
Tensor causal_conv1d_step(Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias);

// The prompt lengths of a right-padded batch of prompts: each row of mask (B·L, 1 = keep) must be 1s
// then 0s, with at least one 1; len_b is the count of 1s. Null mask: every length is L. Anything else
// (a hole inside a prompt, an empty prompt) is a ShapeError naming the row.
std::vector<int64_t> prompt_lengths(const std::vector<uint8_t>* mask, int64_t batch, int64_t length);

// The conv state after a prompt: conv_state[b, e, k] = x[b, len_b − (K−1) + k, e], zero where that
// position is negative (prompts shorter than K−1). x (B, L, E); lengths: B prompt lengths in [1, L],
// or null for every sequence of length L. Returns (B, E, K−1).
Tensor causal_conv1d_final_state(const Tensor& x, int64_t width, const std::vector<int64_t>* lengths = nullptr);

// The inputs of one step of the selective scan: those of SelectiveScanInputs at one position.
struct SelectiveScanStepInputs {
  const Tensor* u = nullptr;           // (B, E)  the conv output after silu (xa)
  const Tensor* delta = nullptr;       // (B, E)  dt · dt_projᵀ, before bias and softplus
  const Tensor* A = nullptr;           // (E, N)  = −exp(A_log)
  const Tensor* B = nullptr;           // (B, N)
  const Tensor* C = nullptr;           // (B, N)
  const Tensor* D = nullptr;           // (E)     skip; may be null
  const Tensor* z = nullptr;           // (B, E)  gate; may be null (no gating)
  const Tensor* delta_bias = nullptr;  // (E)     may be null
  bool delta_softplus = true;
};

// One step of selective_scan_forward, with the same formulas (softplus written to never overflow):
//   Δ[b,e]      = softplus(delta[b,e] + delta_bias[e])                   (or without softplus when off)
//   h[b,e,n]   ← exp(Δ[b,e] · A[e,n]) · h[b,e,n] + Δ[b,e] · u[b,e] · B[b,n]
//   y[b,e]      = Σ_n h[b,e,n] · C[b,n] + D[e] · u[b,e]
//   out         = y ⊙ silu(z)                                            (or y when z is null)
// ssm_state h (B, E, N) is updated in place. Returns out (B, E).
Tensor selective_scan_step(Tensor& ssm_state, const SelectiveScanStepInputs& in);

}  // namespace mr1
