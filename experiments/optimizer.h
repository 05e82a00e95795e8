// Optimizers (a registry: adamw, sgd), gradient-norm clipping and the learning-rate schedule.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "blocks/parameters.h"
#include "registry/config.h"
#include "registry/registry.h"

namespace mr1 {

struct StoredTensor;
struct SafetensorsFile;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every trainable parameter from its gradient.
  virtual void step(ParameterStore& parameters, double learning_rate) = 0;
  // The state to resume from (moments by parameter name) and its inverse, which puts each moment on
  // its parameter's device.
  virtual std::map<std::string, StoredTensor> state() const = 0;
  virtual void load_state(const SafetensorsFile& file, const ParameterStore& parameters) = 0;
  virtual int64_t steps_taken() const = 0;
};

// table: the [optimizer] table; the optimizer reads its own keys.
using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(const ConfigTable& table, ParameterStore& parameters)>;
Registry<OptimizerFactory>& optimizer_registry();

// Scales every gradient so that their global L2 norm is at most max_norm (no-op when max_norm <= 0).
// Returns the norm before clipping.
double clip_gradient_norm(ParameterStore& parameters, double max_norm);

struct LearningRateSchedule {
  double peak = 1e-3;            // [training] learning_rate
  int64_t warmup_steps = 0;      // linear from peak / warmup_steps up to peak
  int64_t total_steps = 1;
  std::string shape = "cosine";  // cosine | linear | constant (after warmup)
  double final_ratio = 0.1;      // the rate at the last step, as a fraction of the peak

  // The rate for step (0-based).
  double at(int64_t step) const;
};

}  // namespace mr1
