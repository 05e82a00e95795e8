// The noisy top-k router (Shazeer et al. 2017): top-k over the logits plus Gaussian noise in training.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class NoisyTopKRouter : public Router {
 public:
  explicit NoisyTopKRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
  RouterGrads backward(const std::vector<float>& grad_gate, const SavedActivations& saved,
                       float aux_loss_scale) override;

 private:
  RouterSettings settings_;
  int64_t num_experts_;
  int64_t k_;
  bool normalize_gates_;
  bool learned_;               // noise = "learned": std softplus(u · W_noiseᵀ); "fixed": noise_std
  double noise_std_;
  Parameter* w_noise_ = nullptr;  // (X, D), learned noise only
};

}  // namespace mr1
