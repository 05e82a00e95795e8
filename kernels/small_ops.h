// Small ops the blocks need beside the big ones: −exp for A = −exp(A_log), and the per-row
// dot products and scalings of the MoE combine step. Shape letters: T rows, F features.
#pragma once

#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

// y = −exp(x), elementwise, saturated at −FLT_MAX: an A_log above ln(FLT_MAX) ≈ 88.72 gives a finite A, so that
// the scan's backward (g·A with g = 0 there) stays finite.
Tensor negative_exp(const Tensor& x);

// out[t] = Σ_f a[t, f] · b[t, f]      a, b: (T, F)
std::vector<float> row_dot(const Tensor& a, const Tensor& b);

// y[t, f] = scales[t] · x[t, f]       x: (T, F), scales: T
Tensor scale_rows(const Tensor& x, const std::vector<float>& scales);

}  // namespace mr1
