// The random router: a uniformly random expert per token, the baseline of every routing study.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class RandomRouter : public DecisionRouter {
 public:
  explicit RandomRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
};

}  // namespace mr1
