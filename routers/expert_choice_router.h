// The expert-choice router (Zhou et al. 2022): each expert takes its top tokens of the batch.
#pragma once

#include "routers/router_common.h"

namespace mr1 {

class ExpertChoiceRouter : public DecisionRouter {
 public:
  explicit ExpertChoiceRouter(const RouterContext& context);
  Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                std::unique_ptr<SavedActivations>* saved) override;
  std::string caveat() const override;
};

}  // namespace mr1
