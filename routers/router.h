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

class Router {
 public:
  virtual ~Router() = default;
  // logits (T, X) in float32 → assignments. `training` picks the capacity factor and any noise.
  // Fills *saved with what backward needs when saved is given.
  virtual Routing route(const Tensor& logits, const BatchInfo& batch, std::unique_ptr<SavedActivations>* saved) = 0;
  // dL/dgate (T·k) → dL/dlogits (T, X), including the gradient of the aux and z losses times aux_loss_scale.
  virtual Tensor backward(const std::vector<float>& grad_gate, const SavedActivations& saved,
                          float aux_loss_scale) = 0;
  virtual void initialize(Random& random) {}
  // After each optimizer step, with the routing of that step (aux_free's bias update).
  virtual void after_step(const RoutingStats& stats) {}
};

// options: the [router] table, from which the router reads its own keys (unknown ones are rejected
// after every reader ran). prefix: "backbone.layers.{i}.mixer.router." for any tensors of its own.
struct RouterContext {
  const RouterSettings& settings;
  const ConfigTable& options;
  int64_t num_experts;
  ParameterStore& parameters;
  std::string prefix;
};

using RouterFactory = std::function<std::unique_ptr<Router>(const RouterContext&)>;
Registry<RouterFactory>& router_registry();

}  // namespace mr1
