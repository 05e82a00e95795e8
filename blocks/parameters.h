// Named parameters of a model: value, gradient and whether weight decay applies. Names are
// the normative safetensors names of DESIGN.md §2.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

struct StoredTensor;
struct SafetensorsFile;

struct Parameter {
  std::string name;
  Tensor value;
  Tensor grad;               // same shape; zero until a backward pass adds to it
  bool weight_decay = true;  // false for norms, biases, A_log, D (as mamba_ssm)
  bool trainable = true;     // false for buffers updated by their layer (a router's balancing bias)
};

class ParameterStore {
 public:
  // A new zero-filled parameter; a duplicate name is an error. The reference stays valid
  // for the life of the store.
  Parameter& add(const std::string& name, Shape shape, bool weight_decay);
  Parameter* find(const std::string& name);
  const Parameter* find(const std::string& name) const;
  Parameter& get(const std::string& name);

  const std::vector<std::unique_ptr<Parameter>>& all() const { return parameters_; }
  int64_t element_count() const;
  void zero_grad();
  // Moves values and gradients to `device`.
  void to(Device device);

  // Values by name, ready for write_safetensors.
  std::map<std::string, StoredTensor> to_stored(const std::string& prefix = "") const;
  // Loads every parameter from `file`: a missing parameter, an unexpected tensor or a shape that
  // differs from the config is a SafetensorsError naming the tensor and both shapes.
  void load(const SafetensorsFile& file);

 private:
  std::vector<std::unique_ptr<Parameter>> parameters_;
  std::map<std::string, Parameter*> by_name_;
  int64_t elements_ = 0;  // of every parameter's value (a parameter's shape never changes)
};

}  // namespace mr1
