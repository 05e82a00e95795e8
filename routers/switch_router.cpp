// The switch router (Fedus et al. 2021, "Switch Transformers"): softmax over the router logits,
// each token to its arg-max expert (lowest index on ties) with gate = that probability, expert
// capacity C = max(floor(capacity_factor · T / X), min_capacity) with slots claimed in token order,
// overflow dropped; load-balancing aux loss and router z-loss (Zoph et al. 2022).
// Shape letters: T tokens, X experts.
#include "routers/switch_router.h"

#include "kernels/activation.h"
#include "kernels/routing.h"

namespace mr1 {

namespace {

struct SwitchSaved : SavedActivations {
  Tensor logits;                  // (T, X)
  Tensor probs;                   // (T, X)
  std::vector<int32_t> expert;    // T: after capacity, −1 = dropped or masked
  std::vector<double> fraction;   // X: f_j of the load-balancing loss
  std::vector<uint8_t> token_mask;
};

}  // namespace

SwitchRouter::SwitchRouter(const RouterContext& context)
    : settings_(context.settings), num_experts_(context.num_experts) {}

Routing SwitchRouter::route(const Tensor& logits_any, const Tensor&, const BatchInfo& batch,
                            std::unique_ptr<SavedActivations>* saved) {
  Tensor logits = logits_any.to(Device::cpu);
  const int64_t T = logits.size(0);
  const std::vector<uint8_t>* mask = batch.mask;

  Tensor probs = softmax_forward(logits);
  Routing routing;
  routing.k = 1;
  std::vector<float> top_probability;
  top_k(probs, 1, routing.expert, top_probability);
  const std::vector<int32_t> first_choice = routing.expert;

  RoutingStats& stats = routing.stats;
  stats.present = true;
  stats.routed_tokens = unmasked_count(T, mask);
  stats.assignments = T;
  const double factor = !batch.training && settings_.eval_capacity_factor != 0 ? settings_.eval_capacity_factor
                                                                               : settings_.capacity_factor;
  const int64_t capacity =
      batch.dropless ? -1 : expert_capacity(factor, stats.routed_tokens, num_experts_, settings_.min_capacity);
  stats.dropped = apply_capacity(routing.expert, 1, num_experts_, capacity, mask);
  routing.gate.assign(static_cast<size_t>(T), 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    if (routing.expert[static_cast<size_t>(t)] >= 0) routing.gate[static_cast<size_t>(t)] = top_probability[t];
  }

  std::vector<double> fraction;
  stats.aux_loss = settings_.aux_loss_coef * load_balance_loss(probs, first_choice, mask, &fraction,
                                                               &stats.mean_probability);
  stats.load = fraction;
  stats.z_loss = settings_.z_loss_coef > 0 ? settings_.z_loss_coef * router_z_loss(logits, mask) : 0.0;
  stats.entropy = normalized_router_entropy(probs, mask);

  if (saved) {
    auto keep = std::make_unique<SwitchSaved>();
    keep->logits = logits;
    keep->probs = probs;
    keep->expert = routing.expert;
    keep->fraction = fraction;
    if (mask) keep->token_mask = *mask;
    *saved = std::move(keep);
  }
  return routing;
}

RouterGrads SwitchRouter::backward(const std::vector<float>& grad_gate, const SavedActivations& saved_any,
                                   float aux_loss_scale) {
  const auto& saved = static_cast<const SwitchSaved&>(saved_any);
  const int64_t T = saved.probs.size(0);
  const std::vector<uint8_t>* mask = saved.token_mask.empty() ? nullptr : &saved.token_mask;
  // gate = probs[t, expert_t]: the gradient reaches only the chosen, kept expert's probability.
  Tensor grad_probs(saved.probs.shape());
  for (int64_t t = 0; t < T; ++t) {
    const int32_t j = saved.expert[static_cast<size_t>(t)];
    if (j >= 0) grad_probs[t * num_experts_ + j] = grad_gate[static_cast<size_t>(t)];
  }
  if (settings_.aux_loss_coef > 0) {
    load_balance_loss_backward(grad_probs, saved.fraction, mask,
                               aux_loss_scale * static_cast<float>(settings_.aux_loss_coef));
  }
  Tensor grad_logits = softmax_backward(grad_probs, saved.probs);
  if (settings_.z_loss_coef > 0) {
    router_z_loss_backward(grad_logits, saved.logits, mask, aux_loss_scale * static_cast<float>(settings_.z_loss_coef));
  }
  return RouterGrads{grad_logits, Tensor()};
}

}  // namespace mr1
