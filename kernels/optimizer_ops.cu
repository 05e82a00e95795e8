// The optimizer updates on CUDA: one thread per parameter value, the CPU's float formulas term by term.
#include <cmath>

#include "kernels/cuda_device.cuh"
#include "kernels/optimizer_ops_cuda.h"

namespace mr1 {

namespace {

constexpr int kThreads = 256;

__global__ void adamw_update_kernel(float* p, const float* g, float* first, float* second, int64_t n, float decay,
                                    float beta1, float beta2, float step_size, float root_correction2, float epsilon) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float value = p[i] * decay;
    const float m = beta1 * first[i] + (1.0f - beta1) * g[i];
    const float v = beta2 * second[i] + (1.0f - beta2) * g[i] * g[i];
    value -= step_size * m / (sqrtf(v) / root_correction2 + epsilon);
    first[i] = m;
    second[i] = v;
    p[i] = value;
  }
}

__global__ void sgd_update_kernel(float* p, const float* g, float* buffer, int64_t n, float decay, float learning_rate,
                                  float momentum) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float direction = g[i];
    if (buffer) direction = buffer[i] = momentum * buffer[i] + g[i];
    p[i] = p[i] * decay - learning_rate * direction;
  }
}

}  // namespace

void adamw_update_cuda(float* parameter, const float* grad, float* m, float* v, int64_t n, float decay, float beta1,
                       float beta2, float step_size, float root_correction2, float epsilon, void* stream) {
  if (n <= 0) return;
  adamw_update_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(
      parameter, grad, m, v, n, decay, beta1, beta2, step_size, root_correction2, epsilon);
  cuda::check_launch("adamw_update_kernel");
}

void sgd_update_cuda(float* parameter, const float* grad, float* momentum_buffer, int64_t n, float decay,
                     float learning_rate, float momentum, void* stream) {
  if (n <= 0) return;
  sgd_update_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(
      parameter, grad, momentum_buffer, n, decay, learning_rate, momentum);
  cuda::check_launch("sgd_update_kernel");
}

}  // namespace mr1
