// The top-k router (GShard): each token to its k most probable experts.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class TopKRouter : public DecisionRouter {
 public:
  explicit TopKRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;

 private:
  int64_t k_;
  bool normalize_gates_;
};

}  // namespace mr1
