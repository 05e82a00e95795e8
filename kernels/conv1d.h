// Causal depthwise 1-D convolution over the sequence, channels last.
// Shape letters: B batch, L length, E channels (d_inner), K kernel width (d_conv).
#pragma once

#include "kernels/tensor.h"

namespace mr1 {

// y[b, t, e] = bias[e] + Σ_k weight[e, k] · x[b, t − K + 1 + k, e]     (x[b, <0, e] = 0)
// x (B, L, E), weight (E, 1, K) as stored or (E, K), bias (E)  →  y (B, L, E)
Tensor causal_conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias);

struct CausalConv1dGrads {
  Tensor input;   // (B, L, E)
  Tensor weight;  // same shape as the weight given
  Tensor bias;    // (E)
};
CausalConv1dGrads causal_conv1d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight);
// The same, as a layer's backward wants it: adds the weight and bias gradients to grad_weight (the
// weight's shape) and grad_bias (E) in place, and returns dL/dx.
Tensor causal_conv1d_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                         Tensor& grad_weight, Tensor& grad_bias);

}  // namespace mr1
