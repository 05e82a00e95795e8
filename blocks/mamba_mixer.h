// The Mamba selective state-space mixer (registered as block "mamba").
#pragma once

#include "blocks/mixer.h"

namespace mr1 {

class MambaMixer : public Mixer {
 public:
  explicit MambaMixer(const BlockContext& context);
  Tensor forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) override;
  Tensor backward(const Tensor& grad_out, const BatchInfo& batch, const LayerRecord& record,
                  float aux_loss_scale) override;
  void initialize(Random& random) override;

 private:
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
