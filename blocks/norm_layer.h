// Normalisation layers (rmsnorm, layernorm, none) and their registry.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "blocks/layer.h"
#include "blocks/parameters.h"
#include "registry/registry.h"

namespace mr1 {

class Random;

class Norm {
 public:
  virtual ~Norm() = default;
  // x (..., D) → (..., D); keeps what backward needs in *saved when saved is given.
  virtual Tensor forward(const Tensor& x, std::unique_ptr<SavedActivations>* saved) = 0;
  // The residual stream's add and this norm: r ← r + delta (a new tensor: an earlier norm may keep the old
  // one for its backward), then the norm of the new r. The same floats as add then forward; a norm whose
  // kernel can fuse the two overrides it.
  virtual Tensor forward_after_add(Tensor& r, const Tensor& delta, std::unique_ptr<SavedActivations>* saved);
  // dL/dy → dL/dx; adds its parameters' gradients.
  virtual Tensor backward(const Tensor& grad_y, const SavedActivations* saved);
  // The same, with dL/dx added to grad_x in place (the residual stream's gradient): no temporary, and
  // no separate add where the norm's kernel can do it. A norm overrides at least one of the two; each
  // one's default calls the other.
  virtual void backward_add(const Tensor& grad_y, const SavedActivations* saved, Tensor& grad_x);
  virtual void initialize(Random& random) {}
};

// prefix: "backbone.layers.{i}.norm" or "backbone.norm_f"; dim: D.
using NormFactory = std::function<std::unique_ptr<Norm>(ParameterStore& parameters, const std::string& prefix,
                                                        int64_t dim)>;
Registry<NormFactory>& norm_registry();

}  // namespace mr1
