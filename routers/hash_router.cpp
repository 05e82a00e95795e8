// The hash router (Roller et al. 2021, "Hash Layers For Large Sparse Models"): expert =
// splitmix64(token id) mod X, fixed for the whole run and nothing learned; where the input is
// embeddings (no token ids) the absolute position of the token (BatchInfo::position) is hashed instead.
// One expert per token with gate 1 (the paper's hash layers do not weight the expert's output).
// Capacity and dropping as switch. No probabilities: entropy 0, mean_probability = the load, no aux
// loss, and dL/dlogits is 0 (router.weight learns only from a z-loss, when z_loss_coef > 0).
#include "routers/hash_router.h"

namespace mr1 {

HashRouter::HashRouter(const RouterContext& context) : DecisionRouter(context, {0.0, context.settings.z_loss_coef}) {}

Routing HashRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                          std::unique_ptr<SavedActivations>* saved) {
  const int64_t T = batch.tokens_count(), X = num_experts_;
  std::vector<int32_t> chosen(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const uint64_t key = batch.tokens ? static_cast<uint64_t>((*batch.tokens)[static_cast<size_t>(t)])
                                      : static_cast<uint64_t>(batch.position(t));
    chosen[static_cast<size_t>(t)] = static_cast<int32_t>(splitmix64(key) % static_cast<uint64_t>(X));
  }
  return finish_routing(fixed_decision(logits, std::move(chosen)), coefficients_, batch,
                        batch_capacity(settings_, batch, 1, X), saved);
}

}  // namespace mr1
