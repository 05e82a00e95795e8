// The causal depthwise conv1d on CUDA, channels last: each thread runs one channel over a chunk of time
// steps (a warp reads 32 consecutive channels of a row: coalesced). Any kernel width K >= 1: the taps are
// read from the (cached) weight, the inputs from global memory, where the K-fold reuse hits the cache.
// The weight and bias gradients are per-chunk partial sums added in a fixed order (deterministic).
// Shape letters: B batch, L length, E channels, K kernel width.
#include <algorithm>

#include "kernels/conv1d_cuda.h"
#include "kernels/cuda_device.cuh"

namespace mr1 {

namespace {

constexpr int kChannelsPerBlock = 128;
constexpr int64_t kForwardSteps = 16;   // time steps per thread in the forward
constexpr int64_t kBackwardSteps = 64;  // and in the backward (fewer partial sums to add)

// The grid is (channel blocks, chunks of time steps, batch rows), the last two capped at cuda::kMaxGridYZ:
// a block takes every gridDim.y-th chunk of every gridDim.z-th row.

// y[b, t, e] = bias[e] + Σ_k w[e, k] · x[b, t − K + 1 + k, e], summed in increasing k as on the CPU.
__global__ void conv1d_forward_kernel(const float* x, const float* weight, const float* bias, float* y, int64_t B,
                                      int64_t L, int64_t E, int64_t K) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + threadIdx.x;
  if (e >= E) return;
  const float* taps = weight + e * K;
  const int64_t chunks = (L + kForwardSteps - 1) / kForwardSteps;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      const int64_t first = chunk * kForwardSteps, last = min(L, first + kForwardSteps);
      for (int64_t t = first; t < last; ++t) {
        float total = bias[e];
        for (int64_t k = max(int64_t{0}, K - 1 - t); k < K; ++k) {
          total += taps[k] * x[(b * L + t - K + 1 + k) * E + e];
        }
        y[(b * L + t) * E + e] = total;
      }
    }
  }
}

// The backward of one chunk of time steps of channel e in batch row b:
// dx[b, s, e] = Σ_k w[e, k] · dy[b, s + K − 1 − k, e]  (over s + K − 1 − k < L; k decreasing, the CPU's order)
// partial[b, chunk, k, e] = Σ_{t in chunk} dy[b, t, e] · x[b, t − K + 1 + k, e];  partial[b, chunk, K, e] = Σ dy
__device__ void conv1d_backward_chunk(const float* grad_y, const float* x, const float* taps, float* grad_x,
                                      float* partial, int64_t b, int64_t chunk, int64_t e, int64_t L, int64_t E,
                                      int64_t K, int64_t chunks) {
  const int64_t first = chunk * kBackwardSteps;
  const int64_t last = min(L, first + kBackwardSteps);
  for (int64_t s = first; s < last; ++s) {
    float total = 0;
    for (int64_t k = K - 1; k >= 0; --k) {
      const int64_t t = s + K - 1 - k;
      if (t < L) total += taps[k] * grad_y[(b * L + t) * E + e];
    }
    grad_x[(b * L + s) * E + e] = total;
  }
  float* out = partial + (b * chunks + chunk) * (K + 1) * E;
  for (int64_t k = 0; k < K; ++k) {
    float total = 0;
    for (int64_t t = max(first, K - 1 - k); t < last; ++t) {
      total += grad_y[(b * L + t) * E + e] * x[(b * L + t - K + 1 + k) * E + e];
    }
    out[k * E + e] = total;
  }
  float bias_total = 0;
  for (int64_t t = first; t < last; ++t) bias_total += grad_y[(b * L + t) * E + e];
  out[K * E + e] = bias_total;
}

__global__ void conv1d_backward_kernel(const float* grad_y, const float* x, const float* weight, float* grad_x,
                                       float* partial, int64_t B, int64_t L, int64_t E, int64_t K, int64_t chunks) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + threadIdx.x;
  if (e >= E) return;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      conv1d_backward_chunk(grad_y, x, weight + e * K, grad_x, partial, b, chunk, e, L, E, K, chunks);
    }
  }
}

// grad_weight[e, k] += sums[k, e],  grad_bias[e] += sums[K, e]
__global__ void conv1d_gather_gradients_kernel(const float* sums, float* grad_weight, float* grad_bias, int64_t E,
                                               int64_t K) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < E; e += stride) {
    for (int64_t k = 0; k < K; ++k) grad_weight[e * K + k] += sums[k * E + e];
    grad_bias[e] += sums[K * E + e];
  }
}

dim3 conv_grid(int64_t E, int64_t L, int64_t steps, int64_t B) {
  return dim3(static_cast<unsigned>((E + kChannelsPerBlock - 1) / kChannelsPerBlock),
              static_cast<unsigned>(std::min((L + steps - 1) / steps, cuda::kMaxGridYZ)),
              static_cast<unsigned>(std::min(B, cuda::kMaxGridYZ)));
}

}  // namespace

void causal_conv1d_forward_cuda(const float* x, const float* weight, const float* bias, float* y, int64_t B, int64_t L,
                                int64_t E, int64_t K, void* stream) {
  if (B <= 0 || L <= 0 || E <= 0) return;
  conv1d_forward_kernel<<<conv_grid(E, L, kForwardSteps, B), kChannelsPerBlock, 0, cuda::as_stream(stream)>>>(
      x, weight, bias, y, B, L, E, K);
  cuda::check_launch("conv1d_forward_kernel");
}

void causal_conv1d_backward_cuda(const float* grad_y, const float* x, const float* weight, float* grad_x,
                                 float* grad_weight, float* grad_bias, int64_t B, int64_t L, int64_t E, int64_t K,
                                 void* stream) {
  if (B <= 0 || L <= 0 || E <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  const int64_t chunks = (L + kBackwardSteps - 1) / kBackwardSteps;
  cuda::DeviceBuffer partial(static_cast<size_t>(B * chunks * (K + 1) * E) * sizeof(float));
  conv1d_backward_kernel<<<conv_grid(E, L, kBackwardSteps, B), kChannelsPerBlock, 0, s>>>(
      grad_y, x, weight, grad_x, partial.as<float>(), B, L, E, K, chunks);
  cuda::check_launch("conv1d_backward_kernel");
  cuda::DeviceBuffer sums(static_cast<size_t>((K + 1) * E) * sizeof(float));
  cuda::column_sums(cuda::MatrixEntries{partial.as<float>(), (K + 1) * E}, B * chunks, (K + 1) * E, sums.as<float>(),
                    false, s, "conv1d weight and bias gradients");
  conv1d_gather_gradients_kernel<<<cuda::blocks_for(E, 256), 256, 0, s>>>(sums.as<float>(), grad_weight, grad_bias, E,
                                                                          K);
  cuda::check_launch("conv1d_gather_gradients_kernel");
}

}  // namespace mr1
