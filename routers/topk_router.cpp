// The top-k router (GShard, Lepikhin et al. 2020, Algorithm 1, generalised from top-2): probs =
// softmax(logits); each token to its k most probable experts (lowest index on ties), with gates
// p_chosen / Σ p_chosen over the token's k choices (normalize_gates, GShard's g1 / (g1 + g2)) or the
// raw probabilities. Capacity is counted per assignment, C = max(floor(capacity_factor · k · T / X),
// min_capacity), and all first choices claim slots before any second choice (GShard dispatches the
// top-1 mask before the top-2 mask); an assignment over capacity is dropped, the others of its token
// stay (their gates are not renormalised, as in GShard). The aux loss is the switch formula with f_j
// from the first choices, as GShard's l_aux counts the top-1 expert only.
// Options: top_k (default 2), normalize_gates (default true when top_k > 1).
#include "routers/topk_router.h"

namespace mr1 {

TopKRouter::TopKRouter(const RouterContext& context)
    : DecisionRouter(context, {context.settings.aux_loss_coef, context.settings.z_loss_coef}),
      k_(read_k(context, 2)),
      normalize_gates_(read_normalize_gates(context, k_)) {}

Routing TopKRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                          std::unique_ptr<SavedActivations>* saved) {
  RouterDecision decision = softmax_decision(logits, k_);
  decision.normalize_gates = normalize_gates_;
  return finish_routing(std::move(decision), coefficients_, batch,
                        batch_capacity(settings_, batch, k_, num_experts_), saved);
}

}  // namespace mr1
