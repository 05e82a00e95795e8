// The random router: each token to a uniformly random expert, the baseline against which learned
// routing is judged (as the random-routing baselines of Roller et al. 2021 and Zuo et al. 2022, THOR).
// In training the expert is drawn from the step's generator (batch.random), one draw per token in
// flattened order, masked tokens included, so it changes every step. At evaluation it is
// splitmix64(splitmix64(b) + absolute position) mod X: uniform-looking but fixed, so evaluation is
// deterministic. One expert per token with gate 1; capacity and dropping as switch. No probabilities:
// entropy 0, mean_probability = the load, no aux loss, dL/dlogits 0 (router.weight learns only from a
// z-loss, when z_loss_coef > 0).
#include "routers/random_router.h"

#include <stdexcept>

#include "blocks/random.h"

namespace mr1 {

RandomRouter::RandomRouter(const RouterContext& context)
    : DecisionRouter(context, {0.0, context.settings.z_loss_coef}) {}

Routing RandomRouter::route(const Tensor& logits, const Tensor&, const BatchInfo& batch,
                            std::unique_ptr<SavedActivations>* saved) {
  const int64_t T = batch.tokens_count(), X = num_experts_;
  if (batch.training && !batch.random) {
    throw std::invalid_argument("random router: training draws experts, but the batch has no random generator");
  }
  std::vector<int32_t> chosen(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    if (batch.training) {
      chosen[static_cast<size_t>(t)] = static_cast<int32_t>(batch.random->below(X));
    } else {
      const uint64_t sequence = static_cast<uint64_t>(t / batch.length);
      const uint64_t position = static_cast<uint64_t>(batch.position(t));
      chosen[static_cast<size_t>(t)] =
          static_cast<int32_t>(splitmix64(splitmix64(sequence) + position) % static_cast<uint64_t>(X));
    }
  }
  return finish_routing(fixed_decision(logits, std::move(chosen)), coefficients_, batch,
                        batch_capacity(settings_, batch, 1, X), saved);
}

}  // namespace mr1
