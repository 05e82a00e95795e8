// RMSNorm and LayerNorm over the last axis. Shape letters: T tokens (leading axes), D features.
#pragma once

#include "kernels/tensor.h"

namespace mr1 {

constexpr float kNormEpsilon = 1e-5f;

// y = x / √(mean(x²) + eps) · weight.   Saves inv_rms (T) = 1/√(mean(x²)+eps) for backward.
Tensor rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor* inv_rms);
// The residual stream's add fused in: *sum = x + delta (a new tensor), and its norm is returned. The same
// floats as add then rmsnorm_forward, in one pass (one kernel on CUDA).
Tensor rmsnorm_forward_after_add(const Tensor& x, const Tensor& delta, const Tensor& weight, Tensor& sum,
                                 Tensor* inv_rms);
struct RmsNormGrads {
  Tensor input;   // (..., D)
  Tensor weight;  // (D)
};
RmsNormGrads rmsnorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& inv_rms);
// The same, as a layer's backward wants it: adds dL/dweight to grad_weight (D) and dL/dx to grad_x (the
// shape of x) in place: no temporaries, and on CUDA no separate adds.
void rmsnorm_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                 Tensor& grad_weight, Tensor& grad_x);

// y = (x − mean) / √(var + eps) · weight + bias  (biased variance, as torch).  Saves mean (T), inv_std (T).
Tensor layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor* mean, Tensor* inv_std);
// The residual stream's add fused in, as rmsnorm_forward_after_add: *sum = x + delta, and its norm.
Tensor layernorm_forward_after_add(const Tensor& x, const Tensor& delta, const Tensor& weight, const Tensor& bias,
                                   Tensor& sum, Tensor* mean, Tensor* inv_std);
struct LayerNormGrads {
  Tensor input;   // (..., D)
  Tensor weight;  // (D)
  Tensor bias;    // (D)
};
LayerNormGrads layernorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                  const Tensor& inv_std);
// Adds dL/dweight and dL/dbias to grad_weight and grad_bias (D), and dL/dx to grad_x, in place.
void layernorm_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                   const Tensor& inv_std, Tensor& grad_weight, Tensor& grad_bias, Tensor& grad_x);

}  // namespace mr1
