// Linear layer (GEMM): the projection every block is built from.
// Shape letters: T tokens (all leading axes flattened), I input features, O output features.
#pragma once

#include "kernels/tensor.h"

namespace mr1 {

// y (..., O) = x (..., I) · weightᵀ (O, I) + bias (O); bias may be null.
Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias);

struct LinearGrads {
  Tensor input;   // (..., I)  dL/dx = dy · weight
  Tensor weight;  // (O, I)    dL/dW = dyᵀ · x
  Tensor bias;    // (O)       dL/db = Σ_t dy[t]; undefined when there is no bias
};
// Gradients of linear_forward; `need_input` false skips dL/dx (first layer).
LinearGrads linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                            bool need_input = true);

// The same, adding dL/dW into grad_weight (O, I) and dL/db into *grad_bias (O; skipped when null) where a
// parameter's gradient accumulates: the GEMM adds in place, with no temporary. Returns dL/dx (..., I), or
// an undefined tensor when `need_input` is false.
Tensor linear_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight, Tensor& grad_weight,
                                  Tensor* grad_bias, bool need_input = true);

// The same, adding dL/dx into grad_x (..., I) too, where another path's gradient of x is already there (a
// residual stream, a second consumer of x): the GEMM adds in place (β = 1), with no temporary and no
// separate add. The sum is rounded as the GEMM accumulates, not as a separate add would.
void linear_backward_add(const Tensor& grad_y, const Tensor& x, const Tensor& weight, Tensor& grad_weight,
                         Tensor* grad_bias, Tensor& grad_x);

}  // namespace mr1
