// The switch router (Fedus et al. 2021, "Switch Transformers"): softmax over the router logits,
// each token to its arg-max expert (lowest index on ties) with gate = that probability, expert
// capacity C = max(floor(capacity_factor · T / X), min_capacity) with slots claimed in token order,
// overflow dropped; load-balancing aux loss and router z-loss (Zoph et al. 2022).
// Shape letters: T tokens, X experts.
#include "routers/switch_router.h"

namespace mr1 {

SwitchRouter::SwitchRouter(const RouterContext& context)
    : DecisionRouter(context, {context.settings.aux_loss_coef, context.settings.z_loss_coef}) {}

Routing SwitchRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                            std::unique_ptr<SavedActivations>* saved) {
  return finish_routing(softmax_decision(logits, 1), coefficients_, batch,
                        batch_capacity(settings_, batch, 1, num_experts_), saved);
}

}  // namespace mr1
