// The Sinkhorn router: BASE layers assign tokens to experts by a balanced linear assignment (Lewis et
// al. 2021); S-BASE approximates it with Sinkhorn iterations (Clark et al. 2022, "Unified Scaling Laws
// for Routed Language Models"), as do Megatron-LM's sinkhorn router and BlackMamba (Anthony et al. 2024).
// In training: M = exp(logits) over the unmasked tokens, `iterations` rounds of scaling rows to sum 1
// and columns to sum T / X (kernels/routing.h sinkhorn_balance), then each token to the arg-max of its
// balanced row (lowest index on ties). At evaluation: the arg-max of the logits (no batch statistics).
// The gate is softmax(logits) of the chosen expert, so gradients flow as in switch, or with gate =
// "sigmoid" sigmoid(logit) as BASE layers and Megatron-LM gate; the balancing itself is a fixed decision
// with no gradient. Capacity, dropping, aux loss (f_j from the chosen experts; on sigmoid scores
// normalised over the experts) and z-loss as switch.
// Options: iterations (default 8), gate ("softmax", the default, or "sigmoid").
#include "routers/sinkhorn_router.h"

#include "kernels/activation.h"
#include "kernels/routing.h"

namespace mr1 {

SinkhornRouter::SinkhornRouter(const RouterContext& context)
    : DecisionRouter(context, {context.settings.aux_loss_coef, context.settings.z_loss_coef}),
      iterations_(context.options.get_int("iterations", 8, 1, 1000)),
      gate_(context.options.get_choice("gate", "softmax", {"softmax", "sigmoid"}) == "sigmoid" ? GateScores::sigmoid
                                                                                          : GateScores::softmax) {}

Routing SinkhornRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                              std::unique_ptr<SavedActivations>* saved) {
  RouterDecision decision = softmax_decision(logits, 1);
  if (gate_ == GateScores::sigmoid) {
    decision.kind = GateScores::sigmoid;
    decision.scores = sigmoid_forward(decision.logits);  // the same arg max as the softmax
  }
  if (batch.training) {
    const Tensor balanced = sinkhorn_balance(decision.logits, iterations_, batch.mask);
    std::vector<float> unused;
    top_k(balanced, 1, decision.chosen, unused);
    decision.balance_choice = decision.chosen;
  }
  return finish_routing(std::move(decision), coefficients_, batch, batch_capacity(settings_, batch, 1, num_experts_),
                        saved);
}

}  // namespace mr1
