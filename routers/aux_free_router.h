// DeepSeek-V3's auxiliary-loss-free load balancing: a per-expert bias steers selection only.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class AuxFreeRouter : public DecisionRouter {
 public:
  explicit AuxFreeRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
  // b_j ← b_j + γ · sign(mean load − load_j)
  void after_step(const RoutingStats& stats) override;

 private:
  int64_t k_;
  bool normalize_gates_;
  double bias_update_rate_;  // γ
  Parameter& bias_;          // (X) router.balance_bias, not trained by the optimizer
};

}  // namespace mr1
