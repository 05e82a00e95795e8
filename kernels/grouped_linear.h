// The grouped linear layer: the experts of an MoE layer as one op over the tokens sorted by expert.
// Rows [offsets[g], offsets[g+1]) of x belong to group g and go through group g's own weight and bias.
// Shape letters: R rows (all groups' rows, sorted by group), G groups, I input features, O output features.
#pragma once

#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

// y[r] (O) = x[r] (I) · weights[g]ᵀ (O, I) + biases[g] (O)      for offsets[g] <= r < offsets[g+1]
// offsets: G + 1 non-decreasing row indices from 0 to R; biases: G tensors, or empty for no biases.
Tensor grouped_linear_forward(const Tensor& x, const std::vector<int64_t>& offsets,
                              const std::vector<const Tensor*>& weights, const std::vector<const Tensor*>& biases);

// Gradients of grouped_linear_forward, added where the parameters' gradients live:
//   grad_weights[g] (O, I) += dy_gᵀ · x_g,   grad_biases[g] (O) += Σ_{r in g} dy[r]   (skipped when empty)
// Returns dL/dx (R, I) = dy_g · weights[g] per group, or an undefined tensor when `need_input` is false.
Tensor grouped_linear_backward(const Tensor& grad_y, const Tensor& x, const std::vector<int64_t>& offsets,
                               const std::vector<const Tensor*>& weights, const std::vector<Tensor*>& grad_weights,
                               const std::vector<Tensor*>& grad_biases, bool need_input = true);

}  // namespace mr1
