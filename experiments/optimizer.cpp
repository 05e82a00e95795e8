// AdamW and SGD, clipping and the schedule.
#include "experiments/optimizer.h"

#include <cmath>
#include <limits>

#include "experiments/safetensors.h"
#include "kernels/optimizer_ops.h"

namespace mr1 {

Registry<OptimizerFactory>& optimizer_registry() {
  static Registry<OptimizerFactory> registry("optimizer");
  return registry;
}

namespace {

// The moment tensors of one optimizer, by parameter name, created on first use.
class MomentStore {
 public:
  Tensor& get(const Parameter& parameter) {
    auto found = moments_.find(parameter.name);
    if (found == moments_.end()) {
      found = moments_.emplace(parameter.name, Tensor(parameter.value.shape(), parameter.value.device())).first;
    }
    return found->second;
  }
  void save(std::map<std::string, StoredTensor>& out, const std::string& prefix) const {
    for (const auto& [name, tensor] : moments_) out[prefix + name] = StoredTensor::from_float(tensor.to(Device::cpu));
  }
  // Moments of the parameters in `parameters`, on their device.
  void load(const SafetensorsFile& file, const std::string& prefix, const ParameterStore& parameters) {
    moments_.clear();
    for (const auto& [name, stored] : file.tensors) {
      if (name.rfind(prefix, 0) != 0) continue;
      const Parameter* parameter = parameters.find(name.substr(prefix.size()));
      if (!parameter || parameter->value.shape() != stored.shape) {
        throw SafetensorsError(file.path + ": optimizer state '" + name + "' matches no parameter of the model");
      }
      moments_.emplace(parameter->name, stored.to_float().to(parameter->value.device()));
    }
  }

 private:
  std::map<std::string, Tensor> moments_;
};

int64_t read_step(const SafetensorsFile& file) {
  auto found = file.metadata.find("step");
  if (found == file.metadata.end()) throw SafetensorsError(file.path + ": no 'step' in the optimizer state's metadata");
  return std::stoll(found->second);
}

class AdamW : public Optimizer {
 public:
  explicit AdamW(const ConfigTable& table) {
    beta1_ = table.get_double("beta1", 0.9);
    beta2_ = table.get_double("beta2", 0.999);
    epsilon_ = table.get_double("eps", 1e-8);
    weight_decay_ = table.get_double("weight_decay", 0.01);
    if (beta1_ < 0 || beta1_ >= 1) table.fail("beta1", "expected a number in [0, 1)");
    if (beta2_ < 0 || beta2_ >= 1) table.fail("beta2", "expected a number in [0, 1)");
    if (!(static_cast<float>(epsilon_) >= std::numeric_limits<float>::min())) {
      table.fail("eps", "expected a number > 0 that float32 holds as a normal number (at least 1.18e-38), found " +
                            render_double(epsilon_));
    }
    if (weight_decay_ < 0) table.fail("weight_decay", "expected a number >= 0");
  }

  // Every parameter in one update (on CUDA, one launch).
  void step(ParameterStore& parameters, double learning_rate) override {
    ++steps_;
    std::vector<AdamWTensors> tensors;
    for (const auto& parameter : parameters.all()) {
      if (!parameter->trainable) continue;
      tensors.push_back(AdamWTensors{&parameter->value, &parameter->grad, &first_.get(*parameter),
                                     &second_.get(*parameter), parameter->weight_decay ? weight_decay_ : 0.0});
    }
    adamw_update(tensors, AdamWHyper{learning_rate, beta1_, beta2_, epsilon_, 0.0, steps_});
  }

  std::map<std::string, StoredTensor> state() const override {
    std::map<std::string, StoredTensor> out;
    first_.save(out, "m.");
    second_.save(out, "v.");
    return out;
  }
  void load_state(const SafetensorsFile& file, const ParameterStore& parameters) override {
    first_.load(file, "m.", parameters);
    second_.load(file, "v.", parameters);
    steps_ = read_step(file);
  }
  int64_t steps_taken() const override { return steps_; }

 private:
  double beta1_, beta2_, epsilon_, weight_decay_;
  int64_t steps_ = 0;
  MomentStore first_, second_;
};

class Sgd : public Optimizer {
 public:
  explicit Sgd(const ConfigTable& table) {
    momentum_ = table.get_double("momentum", 0.9);
    weight_decay_ = table.get_double("weight_decay", 0.0);
    if (momentum_ < 0 || momentum_ >= 1) table.fail("momentum", "expected a number in [0, 1)");
  }

  void step(ParameterStore& parameters, double learning_rate) override {
    ++steps_;
    for (const auto& parameter : parameters.all()) {
      if (!parameter->trainable) continue;
      Tensor unused;
      Tensor& buffer = momentum_ != 0 ? buffers_.get(*parameter) : unused;
      sgd_update(parameter->value, parameter->grad, buffer, learning_rate, momentum_,
                 parameter->weight_decay ? weight_decay_ : 0.0);
    }
  }

  std::map<std::string, StoredTensor> state() const override {
    std::map<std::string, StoredTensor> out;
    buffers_.save(out, "momentum.");
    return out;
  }
  void load_state(const SafetensorsFile& file, const ParameterStore& parameters) override {
    buffers_.load(file, "momentum.", parameters);
    steps_ = read_step(file);
  }
  int64_t steps_taken() const override { return steps_; }

 private:
  double momentum_, weight_decay_;
  int64_t steps_ = 0;
  MomentStore buffers_;
};

}  // namespace

void register_optimizers() {
  auto& registry = optimizer_registry();
  registry.add("adamw", "Adam with decoupled weight decay (none on norms, biases, A_log, D); beta1, beta2, eps, "
                        "weight_decay",
               [](const ConfigTable& table, ParameterStore&) -> std::unique_ptr<Optimizer> {
                 return std::make_unique<AdamW>(table);
               });
  registry.add("sgd", "stochastic gradient descent with momentum; momentum, weight_decay",
               [](const ConfigTable& table, ParameterStore&) -> std::unique_ptr<Optimizer> {
                 return std::make_unique<Sgd>(table);
               });
}

double clip_gradient_norm(ParameterStore& parameters, double max_norm) {
  std::vector<const Tensor*> grads;
  for (const auto& parameter : parameters.all()) {
    if (parameter->trainable) grads.push_back(&parameter->grad);
  }
  const double norm = std::sqrt(squared_norm(grads));
  if (max_norm > 0 && norm > max_norm) {
    std::vector<Tensor*> scaled;
    for (const auto& parameter : parameters.all()) {
      if (parameter->trainable) scaled.push_back(&parameter->grad);
    }
    scale_inplace(scaled, static_cast<float>(max_norm / (norm + 1e-6)));
  }
  return norm;
}

double LearningRateSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return peak * static_cast<double>(step + 1) / warmup_steps;
  if (shape == "constant") return peak;
  const int64_t span = std::max<int64_t>(total_steps - warmup_steps - 1, 1);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(span));
  const double floor = peak * final_ratio;
  if (shape == "linear") return peak - (peak - floor) * progress;
  return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace mr1
