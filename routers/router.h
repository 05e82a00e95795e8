// The router of an MoE layer: from router logits to expert assignments and gates, and back.
// Each variant is a registered plugin (routers/register_routers.cpp).
// Shape letters: T tokens (B·L), X experts, k assignments per token.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "blocks/layer.h"
#include "blocks/parameters.h"
#include "registry/config.h"
#include "registry/model_config.h"
#include "registry/registry.h"

namespace mr1 {

class Random;

struct Routing {
  int64_t k = 1;                // assignments per token
  std::vector<int32_t> expert;  // T·k: expert of assignment (t, r), −1 = none (masked or dropped)
  std::vector<float> gate;      // T·k: the weight of that expert's output
  RoutingStats stats;
};

// The gradients a router returns: always dL/dlogits; dL/dinput only for routers that read the
// MoE input themselves (e.g. learned noise), else undefined.
struct RouterGrads {
  Tensor logits;  // (T, X)
  Tensor input;   // (T, D) or undefined
};

class Router {
 public:
  virtual ~Router() = default;
  // logits (T, X) in float32 and the layer's input (T, D) → assignments. batch.training picks the
  // capacity factor and any noise; batch.tokens holds token ids (hash routing); batch.random samples.
  // Fills *saved with what backward needs when saved is given.
  virtual Routing route(const Tensor& logits, const Tensor& input, const BatchInfo& batch,
                        std::unique_ptr<SavedActivations>* saved) = 0;
  // dL/dgate (T·k) → gradients, including those of the aux and z losses times aux_loss_scale. Adds the
  // gradients of the router's own parameters, if any.
  virtual RouterGrads backward(const std::vector<float>& grad_gate, const SavedActivations& saved,
                               float aux_loss_scale) = 0;
  virtual void initialize(Random& random) {}
  // After each optimizer step, with the routing statistics of that step (aux_free's bias update).
  virtual void after_step(const RoutingStats& stats) {}
  // A warning for the log when the router does not suit the experiment (expert_choice with a causal task).
  virtual std::string caveat() const { return ""; }
};

// options: the [router] table, from which the router reads its own keys (unknown ones are rejected
// after every reader ran). prefix: "backbone.layers.{i}.mixer.router." for any tensors of its own.
// dim: D, the width of the MoE input that route() receives (for routers that read it: noisy_topk).
struct RouterContext {
  const RouterSettings& settings;
  const ConfigTable& options;
  int64_t num_experts;
  ParameterStore& parameters;
  std::string prefix;
  int64_t dim = 0;
};

using RouterFactory = std::function<std::unique_ptr<Router>(const RouterContext&)>;
Registry<RouterFactory>& router_registry();

}  // namespace mr1
