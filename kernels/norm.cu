// CUDA kernels of RMSNorm and LayerNorm: one warp per row (T rows), row sums in double as on the CPU;
// the weight and bias gradients are deterministic column sums. Shape letters: T rows, D features.
#include <cmath>

#include "kernels/cuda_device.cuh"
#include "kernels/norm.h"
#include "kernels/norm_cuda.h"

namespace mr1 {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

unsigned row_blocks(int64_t T) { return static_cast<unsigned>((T + kRowsPerBlock - 1) / kRowsPerBlock); }

// Row t of a norm's input: x's own, or, with delta, the row of sum = x + delta, written first by the row's warp
// (each lane reads back only the values it wrote).
__device__ const float* input_row(const float* x, const float* delta, float* sum, int64_t t, int64_t D, int lane) {
  if (!delta) return x + t * D;
  for (int64_t j = lane; j < D; j += 32) sum[t * D + j] = x[t * D + j] + delta[t * D + j];
  return sum + t * D;
}

// y[t] = x[t] · r · weight,  r = inv_rms[t] = 1/√(mean_j x[t, j]² + eps); of sum[t] = x[t] + delta[t] with delta.
__global__ void rmsnorm_forward_kernel(const float* x, const float* weight, float* y, float* inv_rms, int64_t T,
                                       int64_t D, const float* delta, float* sum) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* in = input_row(x, delta, sum, t, D, lane);
  double squares = 0;
  for (int64_t j = lane; j < D; j += 32) squares += static_cast<double>(in[j]) * in[j];
  squares = cuda::warp_sum(squares);
  const float r = static_cast<float>(1.0 / sqrt(squares / D + kNormEpsilon));
  for (int64_t j = lane; j < D; j += 32) y[t * D + j] = in[j] * r * weight[j];
  if (lane == 0) inv_rms[t] = r;
}

// dx[t, j] = r · (g[j] − x[t, j] · r² · Σ_i g[i] x[t, i] / D),  g = dy ⊙ weight
__global__ void rmsnorm_backward_kernel(const float* grad_y, const float* x, const float* weight, const float* inv_rms,
                                        float* grad_x, int64_t T, int64_t D) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* in = x + t * D;
  const float* dy = grad_y + t * D;
  const double r = inv_rms[t];
  double projection = 0;
  for (int64_t i = lane; i < D; i += 32) projection += static_cast<double>(dy[i]) * weight[i] * in[i];
  projection = cuda::warp_sum(projection);
  const double coefficient = projection / D * r * r;
  for (int64_t j = lane; j < D; j += 32) {
    grad_x[t * D + j] += static_cast<float>(r * (static_cast<double>(dy[j]) * weight[j] - in[j] * coefficient));
  }
}

// μ = mean x[t], s = 1/√(mean (x[t] − μ)² + eps), y = (x − μ) s · weight + bias; of x[t] + delta[t] with
// delta.
__global__ void layernorm_forward_kernel(const float* x, const float* weight, const float* bias, float* y, float* mean,
                                         float* inv_std, int64_t T, int64_t D, const float* delta, float* sum) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* in = input_row(x, delta, sum, t, D, lane);
  double total = 0;
  for (int64_t j = lane; j < D; j += 32) total += in[j];
  const double mu = cuda::warp_sum(total) / D;
  double squares = 0;
  for (int64_t j = lane; j < D; j += 32) squares += (in[j] - mu) * (in[j] - mu);
  const double s = 1.0 / sqrt(cuda::warp_sum(squares) / D + kNormEpsilon);
  for (int64_t j = lane; j < D; j += 32) y[t * D + j] = static_cast<float>((in[j] - mu) * s) * weight[j] + bias[j];
  if (lane == 0) {
    mean[t] = static_cast<float>(mu);
    inv_std[t] = static_cast<float>(s);
  }
}

// dx[t] = s · (g − mean_j g[j] − x̂ · mean_j g[j] x̂[j]),  x̂ = (x − μ) s,  g = dy ⊙ weight
__global__ void layernorm_backward_kernel(const float* grad_y, const float* x, const float* weight, const float* mean,
                                          const float* inv_std, float* grad_x, int64_t T, int64_t D) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* in = x + t * D;
  const float* dy = grad_y + t * D;
  const double mu = mean[t], s = inv_std[t];
  double g_total = 0, g_projection = 0;
  for (int64_t j = lane; j < D; j += 32) {
    const double g = static_cast<double>(dy[j]) * weight[j];
    g_total += g;
    g_projection += g * ((in[j] - mu) * s);
  }
  const double g_mean = cuda::warp_sum(g_total) / D;
  const double projection_mean = cuda::warp_sum(g_projection) / D;
  for (int64_t j = lane; j < D; j += 32) {
    const double g = static_cast<double>(dy[j]) * weight[j];
    grad_x[t * D + j] += static_cast<float>(s * (g - g_mean - (in[j] - mu) * s * projection_mean));
  }
}

// The terms of the weight and bias gradients, summed over rows by cuda::column_sums.
struct RmsWeightTerm {
  const float *grad_y, *x, *inv_rms;
  int64_t D;
  __device__ double operator()(int64_t t, int64_t j) const {
    return static_cast<double>(grad_y[t * D + j]) * x[t * D + j] * inv_rms[t];
  }
};
struct LayerNormWeightTerm {
  const float *grad_y, *x, *mean, *inv_std;
  int64_t D;
  __device__ double operator()(int64_t t, int64_t j) const {
    return static_cast<double>(grad_y[t * D + j]) * ((static_cast<double>(x[t * D + j]) - mean[t]) * inv_std[t]);
  }
};

}  // namespace

void rmsnorm_forward_cuda(const float* x, const float* weight, float* y, float* inv_rms, int64_t T, int64_t D,
                          void* stream, const float* delta, float* sum) {
  if (T <= 0) return;
  rmsnorm_forward_kernel<<<row_blocks(T), kThreads, 0, cuda::as_stream(stream)>>>(x, weight, y, inv_rms, T, D, delta,
                                                                                  sum);
  cuda::check_launch("rmsnorm_forward_kernel");
}

void rmsnorm_backward_cuda(const float* grad_y, const float* x, const float* weight, const float* inv_rms,
                           float* grad_x, float* grad_weight, int64_t T, int64_t D, void* stream) {
  if (T <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  rmsnorm_backward_kernel<<<row_blocks(T), kThreads, 0, s>>>(grad_y, x, weight, inv_rms, grad_x, T, D);
  cuda::check_launch("rmsnorm_backward_kernel");
  cuda::column_sums(RmsWeightTerm{grad_y, x, inv_rms, D}, T, D, grad_weight, true, s, "rmsnorm weight gradient");
}

void layernorm_forward_cuda(const float* x, const float* weight, const float* bias, float* y, float* mean,
                            float* inv_std, int64_t T, int64_t D, void* stream, const float* delta, float* sum) {
  if (T <= 0) return;
  layernorm_forward_kernel<<<row_blocks(T), kThreads, 0, cuda::as_stream(stream)>>>(x, weight, bias, y, mean, inv_std,
                                                                                    T, D, delta, sum);
  cuda::check_launch("layernorm_forward_kernel");
}

void layernorm_backward_cuda(const float* grad_y, const float* x, const float* weight, const float* mean,
                             const float* inv_std, float* grad_x, float* grad_weight, float* grad_bias, int64_t T,
                             int64_t D, void* stream) {
  if (T <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  layernorm_backward_kernel<<<row_blocks(T), kThreads, 0, s>>>(grad_y, x, weight, mean, inv_std, grad_x, T, D);
  cuda::check_launch("layernorm_backward_kernel");
  cuda::column_sums(LayerNormWeightTerm{grad_y, x, mean, inv_std, D}, T, D, grad_weight, true, s,
                    "layernorm weight gradient");
  cuda::column_sums(cuda::MatrixEntries{grad_y, D}, T, D, grad_bias, true, s, "layernorm bias gradient");
}

}  // namespace mr1
