// Positional encodings applied to the model input (learned, rotary) and their registry.
#pragma once

#include <functional>
#include <memory>

#include "blocks/parameters.h"
#include "registry/model_config.h"
#include "registry/registry.h"

namespace mr1 {

class Random;

class PositionalEncoding {
 public:
  virtual ~PositionalEncoding() = default;
  // x (B, L, D) → (B, L, D), positions start_position .. start_position + L − 1.
  virtual Tensor forward(const Tensor& x, int64_t start_position) = 0;
  // dL/dy → dL/dx; adds its parameters' gradients.
  virtual Tensor backward(const Tensor& grad_y, int64_t start_position) = 0;
  virtual void initialize(Random& random) {}
};

using PositionalFactory = std::function<std::unique_ptr<PositionalEncoding>(ParameterStore& parameters,
                                                                            const ModelConfig& model)>;
Registry<PositionalFactory>& positional_registry();

}  // namespace mr1
