// Rotary positional encoding (RoFormer), applied to the model input.
// Shape letters: B batch, L length, D features (even).
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace mr1 {

// y = x · cos θ + rotate_half(x) · sin θ, rotate_half(x) = concat(−x[D/2:], x[:D/2]),
// θ[l, j] = (start_position + l) · 10000^(−2·(j mod D/2)/D).     x, y: (B, L, D)
Tensor rotary_forward(const Tensor& x, int64_t start_position = 0);
// The rotation is orthogonal: dL/dx = rotation by −θ of dL/dy.
Tensor rotary_backward(const Tensor& grad_y, int64_t start_position = 0);

}  // namespace mr1
