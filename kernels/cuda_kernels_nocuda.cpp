// The CUDA launchers of a build without nvcc: they link, and say so in one clear line if ever called
// (the dispatch reaches them only for CUDA tensors, which such a build cannot create).
#include <stdexcept>
#include <string>

#include "kernels/activation_cuda.h"
#include "kernels/conv1d_cuda.h"
#include "kernels/cross_entropy_cuda.h"
#include "kernels/elementwise_cuda.h"
#include "kernels/grouped_linear_cuda.h"
#include "kernels/linear_cuda.h"
#include "kernels/norm_cuda.h"
#include "kernels/optimizer_ops_cuda.h"
#include "kernels/rotary_cuda.h"
#include "kernels/routing_cuda.h"
#include "kernels/selective_scan_cuda.h"
#include "kernels/small_ops_cuda.h"
#include "kernels/ssm_step_cuda.h"

namespace mr1 {

namespace {
[[noreturn]] void no_backend(const char* launcher) {
  throw std::runtime_error(std::string(launcher) +
                           ": this build of mamba-r1 has no CUDA backend (nvcc was not found at configure time)");
}
}  // namespace

void linear_forward_cuda(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, void*) {
  no_backend("linear_forward_cuda");
}
void linear_backward_cuda(const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t, int64_t,
                          void*, bool) {
  no_backend("linear_backward_cuda");
}

void grouped_linear_forward_cuda(const float*, const std::vector<int64_t>&, const std::vector<const float*>&,
                                 const std::vector<const float*>&, float*, int64_t, int64_t, void*) {
  no_backend("grouped_linear_forward_cuda");
}
void grouped_linear_backward_cuda(const float*, const float*, const std::vector<int64_t>&,
                                  const std::vector<const float*>&, float*, const std::vector<float*>&,
                                  const std::vector<float*>&, int64_t, int64_t, void*) {
  no_backend("grouped_linear_backward_cuda");
}

void add_scaled_cuda(float*, const float*, const float*, float, int64_t, void*) { no_backend("add_scaled_cuda"); }
void multiply_cuda(float*, const float*, const float*, int64_t, void*) { no_backend("multiply_cuda"); }
void scale_cuda(float*, const float*, float, int64_t, void*) { no_backend("scale_cuda"); }
void copy_columns_cuda(const float*, int64_t, int64_t, float*, int64_t, int64_t, int64_t, int64_t, void*) {
  no_backend("copy_columns_cuda");
}
void gather_rows_cuda(const float*, const int64_t*, float*, int64_t, int64_t, void*) { no_backend("gather_rows_cuda"); }
void scatter_add_rows_cuda(float*, const float*, const int64_t*, const int64_t*, const int64_t*, const float*, int64_t,
                           int64_t, void*) {
  no_backend("scatter_add_rows_cuda");
}
void zero_masked_rows_cuda(float*, const uint8_t*, int64_t, int64_t, void*) { no_backend("zero_masked_rows_cuda"); }
double sum_cuda(const float*, int64_t, void*) { no_backend("sum_cuda"); }
double sum_squared_deviation_cuda(const float*, int64_t, double, void*) { no_backend("sum_squared_deviation_cuda"); }
void sum_squares_cuda(const float* const*, const int64_t*, int64_t, double*, void*) { no_backend("sum_squares_cuda"); }
float max_abs_cuda(const float*, int64_t, void*) { no_backend("max_abs_cuda"); }

void gelu_forward_cuda(const float*, float*, int64_t, void*) { no_backend("gelu_forward_cuda"); }
void gelu_backward_cuda(const float*, const float*, float*, int64_t, void*) { no_backend("gelu_backward_cuda"); }
void silu_forward_cuda(const float*, float*, int64_t, void*) { no_backend("silu_forward_cuda"); }
void silu_backward_cuda(const float*, const float*, float*, int64_t, void*) { no_backend("silu_backward_cuda"); }
void sigmoid_forward_cuda(const float*, float*, int64_t, void*) { no_backend("sigmoid_forward_cuda"); }
void softmax_forward_cuda(const float*, float*, int64_t, int64_t, void*) { no_backend("softmax_forward_cuda"); }
void softmax_backward_cuda(const float*, const float*, float*, int64_t, int64_t, void*) {
  no_backend("softmax_backward_cuda");
}
void logsumexp_forward_cuda(const float*, float*, int64_t, int64_t, void*) { no_backend("logsumexp_forward_cuda"); }

void rmsnorm_forward_cuda(const float*, const float*, float*, float*, int64_t, int64_t, void*, const float*, float*) {
  no_backend("rmsnorm_forward_cuda");
}
void rmsnorm_backward_cuda(const float*, const float*, const float*, const float*, float*, float*, int64_t, int64_t,
                           void*) {
  no_backend("rmsnorm_backward_cuda");
}
void layernorm_forward_cuda(const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t, void*,
                            const float*, float*) {
  no_backend("layernorm_forward_cuda");
}
void layernorm_backward_cuda(const float*, const float*, const float*, const float*, const float*, float*, float*,
                             float*, int64_t, int64_t, void*) {
  no_backend("layernorm_backward_cuda");
}

void rotate_cuda(const float*, float*, int64_t, int64_t, int64_t, int64_t, double, void*) { no_backend("rotate_cuda"); }

void cross_entropy_cuda(const float*, const int32_t*, float*, double*, int32_t*, int64_t, int64_t, double, void*) {
  no_backend("cross_entropy_cuda");
}

void causal_conv1d_forward_cuda(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                void*) {
  no_backend("causal_conv1d_forward_cuda");
}
void causal_conv1d_backward_cuda(const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t,
                                 int64_t, int64_t, void*) {
  no_backend("causal_conv1d_backward_cuda");
}

void selective_scan_forward_cuda(const SelectiveScanPointers&, float*, float*, int64_t, int64_t, int64_t, int64_t,
                                 void*) {
  no_backend("selective_scan_forward_cuda");
}
void selective_scan_backward_cuda(const float*, const SelectiveScanPointers&, const SelectiveScanGradPointers&, int64_t,
                                  int64_t, int64_t, int64_t, void*) {
  no_backend("selective_scan_backward_cuda");
}

void negative_exp_cuda(const float*, float*, int64_t, void*) { no_backend("negative_exp_cuda"); }
void row_dot_cuda(const float*, const float*, float*, int64_t, int64_t, void*) { no_backend("row_dot_cuda"); }
void scale_rows_cuda(const float*, const float*, float*, int64_t, int64_t, void*) { no_backend("scale_rows_cuda"); }

void adamw_update_cuda(float*, const float*, float*, float*, int64_t, float, float, float, float, float, float, void*) {
  no_backend("adamw_update_cuda");
}
void sgd_update_cuda(float*, const float*, float*, int64_t, float, float, float, void*) {
  no_backend("sgd_update_cuda");
}
void adamw_update_many_cuda(const AdamWSlot*, int64_t, float, float, float, float, float, void*) {
  no_backend("adamw_update_many_cuda");
}
void scale_many_cuda(float* const*, const int64_t*, int64_t, float, void*) { no_backend("scale_many_cuda"); }
void fill_many_cuda(float* const*, const int64_t*, int64_t, float, void*) { no_backend("fill_many_cuda"); }

void top_k_cuda(const float*, int64_t, int64_t, int64_t, int32_t*, float*, void*) { no_backend("top_k_cuda"); }
void apply_capacity_cuda(int32_t*, int64_t, int64_t, int64_t, int64_t, const uint8_t*, int32_t*, int64_t*, int64_t*,
                         void*) {
  no_backend("apply_capacity_cuda");
}
void routing_permutation_cuda(const int32_t*, const int32_t*, const int64_t*, int64_t, int64_t, int64_t*, int64_t*,
                              void*) {
  no_backend("routing_permutation_cuda");
}
void combine_from_experts_cuda(const float*, const int64_t*, const float*, float*, int64_t, int64_t, int64_t, void*) {
  no_backend("combine_from_experts_cuda");
}

void causal_conv1d_step_cuda(float*, const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                             void*) {
  no_backend("causal_conv1d_step_cuda");
}
void causal_conv1d_final_state_cuda(const float*, const int64_t*, float*, int64_t, int64_t, int64_t, int64_t, void*) {
  no_backend("causal_conv1d_final_state_cuda");
}
void selective_scan_step_cuda(float*, const SelectiveScanStepPointers&, float*, int64_t, int64_t, int64_t, void*) {
  no_backend("selective_scan_step_cuda");
}

}  // namespace mr1
