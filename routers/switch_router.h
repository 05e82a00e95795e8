// The switch router: top-1 with capacity and dropping (the seed's).
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class SwitchRouter : public DecisionRouter {
 public:
  explicit SwitchRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
};

}  // namespace mr1
