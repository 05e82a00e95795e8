// The parameter updates of the optimizers, one op each (AdamW also over many tensors at once), and the
// ops over all of a model's gradients: their squared norm, scaling and filling (clipping, zeroing).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

struct AdamWHyper {
  double learning_rate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;  // decoupled (Loshchilov & Hutter 2019); 0 for parameters without decay
  int64_t step = 1;           // 1-based, for the bias corrections
};

// AdamW as torch.optim.AdamW:
//   p ← p − lr·wd·p;  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²
//   p ← p − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + eps)
void adamw_update(Tensor& parameter, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& hyper);

// One parameter's tensors for the AdamW update of many at once, and its own weight decay.
struct AdamWTensors {
  Tensor* parameter;
  const Tensor* grad;
  Tensor* m;
  Tensor* v;
  double weight_decay;
};
// adamw_update of each entry with hyper and the entry's weight decay (hyper.weight_decay is not used);
// on CUDA all in one launch, with the same arithmetic per value.
void adamw_update(const std::vector<AdamWTensors>& tensors, const AdamWHyper& hyper);

// SGD with momentum and decoupled weight decay:  p ← p − lr·wd·p;  b ← μ b + g;  p ← p − lr · b
// (momentum 0: p ← p − lr · g; the buffer is then unused and may be undefined).
void sgd_update(Tensor& parameter, const Tensor& grad, Tensor& momentum_buffer, double learning_rate,
                double momentum, double weight_decay);

// Σ x², accumulated in double.
double squared_norm(const Tensor& x);
// Σ over the tensors of Σ x², added in their order; on CUDA with one wait for the device, not one each.
double squared_norm(const std::vector<const Tensor*>& tensors);
// x ← factor · x for each tensor (gradient clipping); on CUDA in one launch.
void scale_inplace(const std::vector<Tensor*>& tensors, float factor);
// x ← value for each tensor (zeroing the gradients); on CUDA in one launch.
void fill_inplace(const std::vector<Tensor*>& tensors, float value);

}  // namespace mr1
