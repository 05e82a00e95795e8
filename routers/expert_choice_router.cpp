// The expert-choice router (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"):
// S = softmax(logits) (T, X); each expert j takes the C unmasked tokens with the largest S[t, j] (ties to
// the lower token index), C = max(floor(capacity_factor · T / X), min_capacity) capped at T, so
// capacity_factor is the paper's c, the mean number of experts per token; gate = S[t, j]. A token may go
// to several experts or to none (its output is then 0: counted in `dropped`).
// Representation: k = X assignments per token, slot (t, j) holds expert j when j chose t, else −1.
// The load is balanced by construction, so the paper uses no aux loss: aux_loss_coef applies only when
// the [router] table sets it (then the switch formula, f_j from each token's arg-max).
// Without capacity (capacity_factor <= 0, or dropless recurrent inference, where an expert cannot see
// the batch) it falls back to top-1 token choice: each token to its arg-max, gate = its probability.
// Caveat: an expert's choice compares a token with every token of the batch, later ones included, so
// in causal LM training the routing of a token depends on the future.
#include "routers/expert_choice_router.h"

#include "kernels/routing.h"

namespace mr1 {

ExpertChoiceRouter::ExpertChoiceRouter(const RouterContext& context)
    : DecisionRouter(context, {explicit_aux_loss_coef(context), context.settings.z_loss_coef}) {}

// Logged by the model once, however many of its layers route this way (Model::caveats).
std::string ExpertChoiceRouter::caveat() const {
  return "router expert_choice: each expert picks its tokens over the whole batch, so a token's routing "
         "depends on later tokens: it leaks the future in causal language-model training and its "
         "evaluation is not comparable with token-choice routers";
}

Routing ExpertChoiceRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                                  std::unique_ptr<SavedActivations>* saved) {
  RouterDecision decision = softmax_decision(logits, 1);
  const int64_t capacity = batch_capacity(settings_, batch, 1, num_experts_);
  if (capacity < 0) return finish_routing(std::move(decision), coefficients_, batch, -1, saved);

  const int64_t T = decision.logits.size(0), X = num_experts_;
  const std::vector<std::vector<int64_t>> picks = top_tokens(decision.scores, capacity, batch.mask);
  decision.k = X;
  decision.chosen.assign(static_cast<size_t>(T * X), -1);
  for (int64_t j = 0; j < X; ++j) {
    for (int64_t t : picks[static_cast<size_t>(j)]) decision.chosen[static_cast<size_t>(t * X + j)] = static_cast<int32_t>(j);
  }
  Routing routing = finish_routing(std::move(decision), coefficients_, batch, -1, saved);
  // dropped: the unmasked tokens no expert chose, of the unmasked tokens
  routing.stats.dropped = 0;
  routing.stats.droppable = routing.stats.routed_tokens;
  for (int64_t t = 0; t < T; ++t) {
    if (!batch.kept(t)) continue;
    bool routed = false;
    for (int64_t j = 0; j < X; ++j) routed = routed || routing.expert[static_cast<size_t>(t * X + j)] >= 0;
    routing.stats.dropped += !routed;
  }
  return routing;
}

}  // namespace mr1
