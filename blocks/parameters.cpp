// The parameter store: naming, counting, moving and loading checkpoints with full checks.
#include "blocks/parameters.h"

#include <cmath>
#include <stdexcept>

#include "experiments/safetensors.h"
#include "kernels/optimizer_ops.h"

namespace mr1 {

namespace {

const char* const kSizeKeys =
    "check model.dim, depth, expand, d_state, num_experts, expert_dim, vocab_size and max_seq_len";

}  // namespace

Parameter& ParameterStore::add(const std::string& name, Shape shape, bool weight_decay) {
  if (by_name_.count(name)) throw std::logic_error("parameter " + name + " added twice");
  // Values and gradients, 8 bytes a parameter: a model of absurd sizes stops here, naming what it asked for,
  // before it fills the machine's memory.
  int64_t elements = 0;
  try {
    elements = shape_numel(shape);
  } catch (const ShapeError& error) {
    throw ShapeError("parameter " + name + ": " + error.what() + "; " + kSizeKeys);
  }
  const long double bytes = 8.0L * (static_cast<long double>(elements_) + static_cast<long double>(elements));
  if (!fits_in_host_memory(bytes)) {
    throw ShapeError("parameter " + name + " " + shape_string(shape) + ": the model's parameters and their gradients " +
                     "would need " + gib_string(bytes) + " or more, and " + host_memory_text() + "; " + kSizeKeys);
  }
  elements_ += elements;
  auto parameter = std::make_unique<Parameter>();
  parameter->name = name;
  parameter->value = Tensor(shape);
  parameter->grad = Tensor(shape);
  parameter->weight_decay = weight_decay;
  by_name_[name] = parameter.get();
  parameters_.push_back(std::move(parameter));
  return *parameters_.back();
}

Parameter* ParameterStore::find(const std::string& name) {
  auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : found->second;
}

const Parameter* ParameterStore::find(const std::string& name) const {
  auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : found->second;
}

Parameter& ParameterStore::get(const std::string& name) {
  Parameter* parameter = find(name);
  if (!parameter) throw std::out_of_range("no parameter named " + name);
  return *parameter;
}

int64_t ParameterStore::element_count() const { return elements_; }

void ParameterStore::zero_grad() {
  std::vector<Tensor*> grads;
  for (auto& parameter : parameters_) grads.push_back(&parameter->grad);
  fill_inplace(grads, 0.0f);  // on CUDA, one launch for them all
}

void ParameterStore::to(Device device) {
  for (auto& parameter : parameters_) {
    parameter->value = parameter->value.to(device);
    parameter->grad = parameter->grad.to(device);
  }
}

std::map<std::string, StoredTensor> ParameterStore::to_stored(const std::string& prefix) const {
  std::map<std::string, StoredTensor> stored;
  for (const auto& parameter : parameters_) {
    stored[prefix + parameter->name] = StoredTensor::from_float(parameter->value.to(Device::cpu));
  }
  return stored;
}

void ParameterStore::load(const SafetensorsFile& file) {
  for (const auto& [name, tensor] : file.tensors) {
    if (!by_name_.count(name)) {
      throw SafetensorsError(file.path + ": unexpected tensor '" + name + "' " + shape_string(tensor.shape) +
                             ": the experiment's model has no parameter of that name");
    }
  }
  for (auto& parameter : parameters_) {
    if (!file.contains(parameter->name)) {
      throw SafetensorsError(file.path + ": missing parameter '" + parameter->name + "' (expected shape " +
                             parameter->value.shape_string() + ")");
    }
    const StoredTensor& stored = file.get(parameter->name);
    if (stored.shape != parameter->value.shape()) {
      throw SafetensorsError(file.path + ": parameter '" + parameter->name + "' has shape " +
                             shape_string(stored.shape) + ", the experiment's model expects " +
                             parameter->value.shape_string());
    }
    if (stored.dtype != DType::F32 && stored.dtype != DType::F16 && stored.dtype != DType::BF16 &&
        stored.dtype != DType::F64) {
      throw SafetensorsError(file.path + ": parameter '" + parameter->name + "' is stored as " +
                             dtype_name(stored.dtype) + "; parameters are F32, F16, BF16 or F64");
    }
    const Tensor value = stored.to_float();
    int64_t non_finite = 0;
    for (int64_t i = 0; i < value.numel(); ++i) non_finite += !std::isfinite(value[i]);
    if (non_finite > 0) {
      throw SafetensorsError(file.path + ": parameter '" + parameter->name + "' holds " + std::to_string(non_finite) +
                             " non-finite values (NaN or inf) of " + std::to_string(value.numel()) +
                             "; were they saved by a run whose loss diverged?");
    }
    parameter->value.copy_from(value);
  }
}

}  // namespace mr1
