// DeepSeek-V3's auxiliary-loss-free load balancing (Liu et al. 2024, "DeepSeek-V3 Technical Report",
// §2.1.2; Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"):
//   s = sigmoid(logits)                               affinities (T, X)
//   chosen = the top k of s + b  (lowest index on ties; b = router.balance_bias (X), selection only)
//   gate = s_chosen / Σ s_chosen over the token's k choices (normalize_gates, default true when k > 1;
//          false: the raw s_chosen)
//   after each optimizer step: b_j ← b_j + γ · sign(mean load − load_j), γ = bias_update_rate,
//          load_j = the fraction of the step's k·T choices that picked j (before dropping).
// b is a buffer (trainable = false), saved in checkpoints; the backward runs through the gates'
// normalisation and the sigmoid only. Default k = 2: with k = 1 normalised gates are all 1 and the
// router would get no gradient (set k = 1 with normalize_gates = false for a top-1 router).
// No aux loss by design: aux_loss_coef applies only when the [router] table sets it, and then it is
// DeepSeek-V3's complementary balance loss (eqs. 17-20) taken over the batch instead of per sequence:
// X · Σ_j f_j · P_j with f_j the fraction of the k·T choices and P_j the mean of s normalised over the X
// experts. Capacity per assignment as topk (capacity_factor <= 0 drops nothing, as DeepSeek-V3).
// Options: top_k, normalize_gates, bias_update_rate (default 0.001, DeepSeek-V3's γ).
#include "routers/aux_free_router.h"

#include "kernels/activation.h"
#include "kernels/routing.h"

namespace mr1 {

AuxFreeRouter::AuxFreeRouter(const RouterContext& context)
    : DecisionRouter(context, {explicit_aux_loss_coef(context), context.settings.z_loss_coef}),
      k_(read_k(context, 2)),
      normalize_gates_(read_normalize_gates(context, k_)),
      bias_update_rate_(context.options.get_double("bias_update_rate", 0.001)),
      bias_(context.parameters.add(context.prefix + "balance_bias", {context.num_experts}, false)) {
  if (bias_update_rate_ < 0) {
    context.options.fail("bias_update_rate", "expected a number >= 0, found " + std::to_string(bias_update_rate_));
  }
  bias_.trainable = false;
}

Routing AuxFreeRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                             std::unique_ptr<SavedActivations>* saved) {
  RouterDecision decision;
  decision.kind = GateScores::sigmoid;
  decision.logits = logits.to(Device::cpu);
  decision.scores = sigmoid_forward(decision.logits);
  decision.k = k_;
  decision.normalize_gates = normalize_gates_;
  // selection on s + b
  const int64_t T = decision.logits.size(0), X = num_experts_;
  const Tensor bias = bias_.value.to(Device::cpu);
  Tensor selection = decision.scores.clone();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < X; ++j) selection[t * X + j] += bias[j];
  }
  std::vector<float> unused;
  top_k(selection, k_, decision.chosen, unused);
  decision.balance_choice = decision.chosen;
  decision.balance_k = k_;
  return finish_routing(std::move(decision), coefficients_, batch, batch_capacity(settings_, batch, k_, X), saved);
}

void AuxFreeRouter::after_step(const RoutingStats& stats) {
  const int64_t X = num_experts_;
  if (!stats.present || static_cast<int64_t>(stats.load.size()) != X) return;
  double total = 0;
  for (double load : stats.load) total += load;
  if (total <= 0) return;  // nothing routed
  const double mean = total / static_cast<double>(X);
  Tensor bias = bias_.value.to(Device::cpu);
  for (int64_t j = 0; j < X; ++j) {
    // loads are fractions of a count: a gap below 1e-12 is rounding, not imbalance
    const double gap = mean - stats.load[static_cast<size_t>(j)];
    const double sign = gap > 1e-12 ? 1.0 : gap < -1e-12 ? -1.0 : 0.0;
    bias[j] += static_cast<float>(bias_update_rate_ * sign);
  }
  if (!bias_.value.is_cpu()) bias_.value.copy_from(bias);
}

}  // namespace mr1
