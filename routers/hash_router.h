// The hash router (Roller et al. 2021): a fixed hash of the token id picks the expert.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class HashRouter : public DecisionRouter {
 public:
  explicit HashRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
};

}  // namespace mr1
