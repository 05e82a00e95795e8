// CUDA launchers of the grouped linear layer: one grouped cuBLAS GEMM per product (float32, TF32 tensor
// cores when cuda::tf32()). Raw device pointers, row-major; offsets and pointer lists on the host.
// Shape letters: R rows, G groups, I inputs, O outputs.
#pragma once

#include <cstdint>
#include <vector>

namespace mr1 {

// y (R, O): rows [offsets[g], offsets[g+1]) = x rows · weights[g]ᵀ (O, I) + biases[g] (O).
// offsets: G + 1 entries; biases: G pointers, or empty for none.
void grouped_linear_forward_cuda(const float* x, const std::vector<int64_t>& offsets,
                                 const std::vector<const float*>& weights, const std::vector<const float*>& biases,
                                 float* y, int64_t I, int64_t O, void* stream);

// grad_x (R, I) = grad_y rows · weights[g], skipped when grad_x is null;
// grad_weights[g] (O, I) += grad_y_gᵀ · x_g;  grad_biases[g] (O) += Σ_{r in g} grad_y[r] (skipped when empty).
void grouped_linear_backward_cuda(const float* grad_y, const float* x, const std::vector<int64_t>& offsets,
                                  const std::vector<const float*>& weights, float* grad_x,
                                  const std::vector<float*>& grad_weights, const std::vector<float*>& grad_biases,
                                  int64_t I, int64_t O, void* stream);

}  // namespace mr1
