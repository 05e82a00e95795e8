// The switch router: top-1 with capacity and dropping (the seed's).
#pragma once

#include "routers/router.h"

namespace mr1 {

class SwitchRouter : public Router {
 public:
  explicit SwitchRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
  RouterGrads backward(const std::vector<float>& grad_gate, const SavedActivations& saved,
                       float aux_loss_scale) override;

 private:
  RouterSettings settings_;
  int64_t num_experts_;
};

}  // namespace mr1
