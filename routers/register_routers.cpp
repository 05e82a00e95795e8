// The router registry and its built-in entries. A new router: one file, one line here.
#include "routers/aux_free_router.h"
#include "routers/expert_choice_router.h"
#include "routers/hash_router.h"
#include "routers/noisy_topk_router.h"
#include "routers/random_router.h"
#include "routers/router.h"
#include "routers/sinkhorn_router.h"
#include "routers/switch_router.h"
#include "routers/topk_router.h"

namespace mr1 {

Registry<RouterFactory>& router_registry() {
  static Registry<RouterFactory> registry("router");
  return registry;
}

namespace {
template <typename RouterType>
RouterFactory make() {
  return [](const RouterContext& context) -> std::unique_ptr<Router> {
    return std::make_unique<RouterType>(context);
  };
}
}  // namespace

void register_routers() {
  auto& registry = router_registry();
  registry.add("switch", "top-1 softmax routing with capacity factor and dropping (Switch Transformer)",
               make<SwitchRouter>());
  registry.add("topk", "top-k softmax routing (top_k, default 2; normalize_gates), capacity per assignment, first "
               "choices claim slots first (GShard)", make<TopKRouter>());
  registry.add("noisy_topk", "top-k over logits plus Gaussian noise in training, learned (tensor router.w_noise) or "
               "fixed (noise, noise_std; top_k, normalize_gates) (Shazeer et al. 2017)", make<NoisyTopKRouter>());
  registry.add("expert_choice", "each expert takes its top tokens of the batch up to capacity (Zhou et al. 2022); "
               "sees the whole batch, so it leaks the future in causal LM training", make<ExpertChoiceRouter>());
  registry.add("hash", "fixed hash of the token id (of the position for embedding input) picks the expert, gate 1, "
               "nothing learned (Hash Layers, Roller et al. 2021)", make<HashRouter>());
  registry.add("random", "a uniformly random expert per token, re-drawn each training step (fixed per sequence row "
               "and position at evaluation), gate 1: the baseline", make<RandomRouter>());
  registry.add("sinkhorn", "top-1 on a Sinkhorn-balanced assignment in training (iterations), arg-max at "
               "evaluation, gate softmax or sigmoid (gate) (BASE layers, S-BASE, BlackMamba)", make<SinkhornRouter>());
  registry.add("aux_free", "DeepSeek-V3 aux-loss-free balancing: sigmoid scores, top-k (top_k, default 2) on scores + "
               "bias (tensor router.balance_bias), bias moved by bias_update_rate per step", make<AuxFreeRouter>());
}

}  // namespace mr1
