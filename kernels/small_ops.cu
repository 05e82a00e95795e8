// The small ops on CUDA: −exp, per-row dot products (one warp per row, in double as on the CPU) and row
// scaling. Shape letters: T rows, F features, n values.
#include <cfloat>
#include <cmath>

#include "kernels/cuda_device.cuh"
#include "kernels/small_ops_cuda.h"

namespace mr1 {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

__global__ void negative_exp_kernel(const float* x, float* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = -fminf(expf(x[i]), FLT_MAX);
  }
}

__global__ void row_dot_kernel(const float* a, const float* b, float* out, int64_t T, int64_t F) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  double total = 0;
  for (int64_t f = lane; f < F; f += 32) total += static_cast<double>(a[t * F + f]) * b[t * F + f];
  total = cuda::warp_sum(total);
  if (lane == 0) out[t] = static_cast<float>(total);
}

__global__ void scale_rows_kernel(const float* x, const float* scales, float* y, int64_t T, int64_t F) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < T * F; i += stride) {
    y[i] = scales[i / F] * x[i];
  }
}

}  // namespace

void negative_exp_cuda(const float* x, float* y, int64_t n, void* stream) {
  if (n <= 0) return;
  negative_exp_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(x, y, n);
  cuda::check_launch("negative_exp_kernel");
}

void row_dot_cuda(const float* a, const float* b, float* out, int64_t T, int64_t F, void* stream) {
  if (T <= 0) return;
  const unsigned blocks = static_cast<unsigned>((T + kRowsPerBlock - 1) / kRowsPerBlock);
  row_dot_kernel<<<blocks, kThreads, 0, cuda::as_stream(stream)>>>(a, b, out, T, F);
  cuda::check_launch("row_dot_kernel");
}

void scale_rows_cuda(const float* x, const float* scales, float* y, int64_t T, int64_t F, void* stream) {
  if (T <= 0 || F <= 0) return;
  scale_rows_kernel<<<cuda::blocks_for(T * F, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(x, scales, y, T,
                                                                                                        F);
  cuda::check_launch("scale_rows_kernel");
}

}  // namespace mr1
