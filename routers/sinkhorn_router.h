// The Sinkhorn router (BASE layers, S-BASE, BlackMamba): top-1 on a Sinkhorn-balanced assignment.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class SinkhornRouter : public DecisionRouter {
 public:
  explicit SinkhornRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;

 private:
  int64_t iterations_;
  GateScores gate_;  // softmax, or sigmoid as BASE layers and Megatron-LM
};

}  // namespace mr1
