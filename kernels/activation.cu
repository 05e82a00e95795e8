// CUDA kernels of the activations (one thread per value) and the softmax family (one warp per row).
// The formulas are the CPU's (kernels/activation.cpp), in float with accurate (non-intrinsic) exp, but for gelu's
// Φ, which is erfc in double (rounded once, as the CPU's; float erfcf would lose digits to the rounding of x/√2).
// Shape letters: n values, T rows, F features.
#include <cmath>

#include "kernels/activation_cuda.h"
#include "kernels/cuda_device.cuh"

namespace mr1 {

namespace {

constexpr int kThreads = 256;
constexpr double kInverseSqrt2 = 0.70710678118654752440;
constexpr float kInverseSqrt2Pi = 0.39894228040143268f;

template <typename Function>
__global__ void map_kernel(const float* x, float* y, int64_t n, Function f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = f(x[i]);
}

template <typename Function>
__global__ void gradient_kernel(const float* grad_y, const float* saved, float* grad_x, int64_t n, Function f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    grad_x[i] = f(grad_y[i], saved[i]);
  }
}

struct Gelu {
  __device__ float operator()(float v) const {
    const double x = v;
    return static_cast<float>(0.5 * x * erfc(-x * kInverseSqrt2));
  }
};
struct GeluGradient {
  __device__ float operator()(float dy, float v) const {
    const float cdf = static_cast<float>(0.5 * erfc(-double(v) * kInverseSqrt2));
    const float pdf = kInverseSqrt2Pi * expf(-0.5f * v * v);
    return dy * (cdf + v * pdf);
  }
};
struct Silu {
  __device__ float operator()(float v) const { return v * cuda::stable_sigmoid(v); }
};
struct SiluGradient {
  __device__ float operator()(float dy, float v) const {
    const float s = cuda::stable_sigmoid(v);
    return dy * s * (1.0f + v * (1.0f - s));
  }
};
struct Sigmoid {
  __device__ float operator()(float v) const { return cuda::stable_sigmoid(v); }
};

template <typename Function>
void launch_map(const float* x, float* y, int64_t n, Function f, void* stream, const char* what) {
  if (n <= 0) return;
  map_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(x, y, n, f);
  cuda::check_launch(what);
}

template <typename Function>
void launch_gradient(const float* grad_y, const float* saved, float* grad_x, int64_t n, Function f, void* stream,
                     const char* what) {
  if (n <= 0) return;
  gradient_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(grad_y, saved, grad_x,
                                                                                                  n, f);
  cuda::check_launch(what);
}

}  // namespace

void gelu_forward_cuda(const float* x, float* y, int64_t n, void* stream) {
  launch_map(x, y, n, Gelu{}, stream, "gelu_forward_kernel");
}
void gelu_backward_cuda(const float* grad_y, const float* x, float* grad_x, int64_t n, void* stream) {
  launch_gradient(grad_y, x, grad_x, n, GeluGradient{}, stream, "gelu_backward_kernel");
}
void silu_forward_cuda(const float* x, float* y, int64_t n, void* stream) {
  launch_map(x, y, n, Silu{}, stream, "silu_forward_kernel");
}
void silu_backward_cuda(const float* grad_y, const float* x, float* grad_x, int64_t n, void* stream) {
  launch_gradient(grad_y, x, grad_x, n, SiluGradient{}, stream, "silu_backward_kernel");
}
void sigmoid_forward_cuda(const float* x, float* y, int64_t n, void* stream) {
  launch_map(x, y, n, Sigmoid{}, stream, "sigmoid_forward_kernel");
}

namespace {

constexpr int kRowsPerBlock = kThreads / 32;

// max_j row[j] over the warp (−inf for an empty row); every lane gets it.
__device__ float row_max(const float* row, int64_t F, int lane) {
  float largest = -INFINITY;
  for (int64_t j = lane; j < F; j += 32) largest = fmaxf(largest, row[j]);
  return cuda::warp_max(largest);
}

// y[t] = exp(x[t] − max) / Σ exp(x[t] − max); a row of all −inf gives NaN, as on the CPU.
__global__ void softmax_forward_kernel(const float* x, float* y, int64_t T, int64_t F) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* in = x + t * F;
  float* out = y + t * F;
  const float largest = row_max(in, F, lane);
  double total = 0;
  for (int64_t j = lane; j < F; j += 32) {
    const float e = expf(in[j] - largest);
    out[j] = e;
    total += e;
  }
  const float inverse = static_cast<float>(1.0 / cuda::warp_sum(total));
  for (int64_t j = lane; j < F; j += 32) out[j] *= inverse;
}

// grad_x[t, i] = y[t, i] (dy[t, i] − Σ_j dy[t, j] y[t, j])
__global__ void softmax_backward_kernel(const float* grad_y, const float* y, float* grad_x, int64_t T, int64_t F) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* dy = grad_y + t * F;
  const float* probabilities = y + t * F;
  double dot = 0;
  for (int64_t j = lane; j < F; j += 32) dot += static_cast<double>(dy[j]) * probabilities[j];
  const float total = static_cast<float>(cuda::warp_sum(dot));
  for (int64_t j = lane; j < F; j += 32) grad_x[t * F + j] = probabilities[j] * (dy[j] - total);
}

// out[t] = max + log Σ exp(x[t] − max); a row whose max is ±inf or NaN returns that max.
__global__ void logsumexp_forward_kernel(const float* x, float* out, int64_t T, int64_t F) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  const float* in = x + t * F;
  const float largest = row_max(in, F, lane);
  if (!isfinite(largest)) {
    if (lane == 0) out[t] = largest;
    return;
  }
  double total = 0;
  for (int64_t j = lane; j < F; j += 32) total += exp(static_cast<double>(in[j]) - largest);
  total = cuda::warp_sum(total);
  if (lane == 0) out[t] = static_cast<float>(largest + log(total));
}

unsigned row_blocks(int64_t T) { return static_cast<unsigned>((T + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void softmax_forward_cuda(const float* x, float* y, int64_t T, int64_t F, void* stream) {
  if (T <= 0 || F <= 0) return;
  softmax_forward_kernel<<<row_blocks(T), kThreads, 0, cuda::as_stream(stream)>>>(x, y, T, F);
  cuda::check_launch("softmax_forward_kernel");
}

void softmax_backward_cuda(const float* grad_y, const float* y, float* grad_x, int64_t T, int64_t F, void* stream) {
  if (T <= 0 || F <= 0) return;
  softmax_backward_kernel<<<row_blocks(T), kThreads, 0, cuda::as_stream(stream)>>>(grad_y, y, grad_x, T, F);
  cuda::check_launch("softmax_backward_kernel");
}

void logsumexp_forward_cuda(const float* x, float* out, int64_t T, int64_t F, void* stream) {
  if (T <= 0) return;
  logsumexp_forward_kernel<<<row_blocks(T), kThreads, 0, cuda::as_stream(stream)>>>(x, out, T, F);
  cuda::check_launch("logsumexp_forward_kernel");
}

}  // namespace mr1
