// The Mamba selective state-space mixer (registered as block "mamba").
#pragma once

#include <utility>

#include "blocks/mixer.h"

namespace mr1 {

// What a mamba block carries from one step of recurrent inference to the next: O(1) in the length.
// Shape letters: B batch, E d_inner, N d_state, K d_conv.
struct MambaState : InferenceState {
  Tensor conv_state;  // (B, E, K−1)  conv inputs x of the last K−1 tokens, oldest first (0 before the start)
  Tensor ssm_state;   // (B, E, N)    h after the last token
  Tensor A;           // (E, N)       −exp(A_log), computed once with the state: weights are fixed while it lives
};

class MambaMixer : public Mixer {
 public:
  explicit MambaMixer(const BlockContext& context);
  Tensor forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) override;
  Tensor backward(const Tensor& grad_out, const BatchInfo& batch, const LayerRecord& record,
                  float aux_loss_scale) override;
  void initialize(Random& random) override;
  // u (B, 1, D): conv1d and scan advance one position from `state` (zeros when null) with O(1) work.
  Tensor step(const Tensor& u, const BatchInfo& batch, std::unique_ptr<InferenceState>& state) override;
  // The parallel forward over prompts u (B, L, D); batch.mask, when given, marks each prompt as the first
  // len_b positions of its row (right padding). `state` receives the state after each prompt's last token.
  Tensor prefill(const Tensor& u, const BatchInfo& batch, std::unique_ptr<InferenceState>& state) override;

 private:
  // What the scan reads besides xa and z, from xa (..., E): [dt, B, C] = xa · x_projᵀ, delta = dt · dt_projᵀ.
  struct ScanProjections {
    Tensor dt;     // (..., R)
    Tensor B;      // (..., N)
    Tensor C;      // (..., N)
    Tensor delta;  // (..., E)  Δ before dt_proj.bias and softplus (both inside the scan)
  };
  // [x, z] = u · in_projᵀ: (..., D) → two (..., E)
  std::pair<Tensor, Tensor> input_projection(const Tensor& u) const;
  ScanProjections scan_projections(const Tensor& xa) const;
  // The scan's inputs (SelectiveScanInputs or SelectiveScanStepInputs: the same fields) over these tensors.
  template <typename ScanInputs>
  ScanInputs scan_inputs(const Tensor& xa, const ScanProjections& projections, const Tensor& A, const Tensor& z) const;
  // forward and prefill: the parallel forward; with `state`, also the state after each sequence's last token.
  Tensor parallel_forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record, MambaState* state);

  int64_t dim_, d_inner_, d_state_, dt_rank_, d_conv_;
  Parameter& in_proj_;         // (2E, D)
  Parameter& conv_weight_;     // (E, 1, K)
  Parameter& conv_bias_;       // (E)
  Parameter& x_proj_;          // (R + 2N, E)
  Parameter& dt_proj_weight_;  // (E, R)
  Parameter& dt_proj_bias_;    // (E)
  Parameter& A_log_;           // (E, N)
  Parameter& D_;               // (E)
  Parameter& out_proj_;        // (D, E)
};

}  // namespace mr1
