// The step-mode ops on CUDA: one thread per channel for the conv step and the prompt's conv state, one
// warp per channel for the scan step (its lanes split the N states; y is a warp sum).
// Shape letters: B batch, L length, E channels, N state size, K kernel width.
#include "kernels/cuda_device.cuh"
#include "kernels/ssm_step_cuda.h"

namespace mr1 {

namespace {

// One thread per (b, e): the same sums in the same order as the CPU (bias, then the taps oldest first).
__global__ void causal_conv1d_step_kernel(float* conv_state, const float* x, const float* weight, const float* bias,
                                          float* y, int64_t items, int64_t E, int64_t K) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= items) return;
  const int64_t e = item % E;
  const float* w = weight + e * K;
  float* window = conv_state + item * (K - 1);
  const float input = x[item];
  float sum = bias[e];
  for (int64_t k = 0; k < K - 1; ++k) sum += w[k] * window[k];
  sum += w[K - 1] * input;
  y[item] = sum;
  for (int64_t k = 0; k + 1 < K - 1; ++k) window[k] = window[k + 1];
  if (K > 1) window[K - 2] = input;
}

__global__ void causal_conv1d_final_state_kernel(const float* x, const int64_t* lengths, float* state, int64_t B,
                                                 int64_t L, int64_t E, int64_t K) {
  const int64_t width = K - 1, total = B * E * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t k = i % width, e = (i / width) % E, b = i / (width * E);
    const int64_t t = lengths[b] - width + k;
    state[i] = t >= 0 ? x[(b * L + t) * E + e] : 0.0f;
  }
}

constexpr int kWarpsPerBlock = 8;

// One warp per (b, e):  Δ = softplus(delta + delta_bias);  h ← exp(Δ A) h + Δ u B;  y = h · C + D u;
// out = y ⊙ silu(z).
__global__ void selective_scan_step_kernel(float* h, SelectiveScanStepPointers in, float* out, int64_t items,
                                           int64_t E, int64_t N) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (item >= items) return;  // the whole warp leaves together
  const int lane = threadIdx.x & 31;
  const int64_t b = item / E, e = item % E;
  float step = in.delta[item] + (in.delta_bias ? in.delta_bias[e] : 0.0f);
  // softplus(v) = max(v, 0) + log1p(exp(−|v|)): exp never overflows (as the CPU writes it)
  if (in.delta_softplus) step = fmaxf(step, 0.0f) + log1pf(expf(-fabsf(step)));
  const float u = in.u[item];
  const float step_u = step * u;
  float* state = h + item * N;
  const float* A = in.A + e * N;
  const float* Bm = in.B + b * N;
  const float* Cm = in.C + b * N;
  float partial = 0;
  for (int64_t n = lane; n < N; n += 32) {
    const float next = expf(step * A[n]) * state[n] + step_u * Bm[n];
    state[n] = next;
    partial += next * Cm[n];
  }
  float y = cuda::warp_sum(partial);
  if (lane == 0) {
    if (in.D) y += in.D[e] * u;
    if (in.z) {
      const float gate = in.z[item];
      y *= gate * cuda::stable_sigmoid(gate);
    }
    out[item] = y;
  }
}

}  // namespace

void causal_conv1d_step_cuda(float* conv_state, const float* x, const float* weight, const float* bias, float* y,
                             int64_t B, int64_t E, int64_t K, void* stream) {
  const int64_t items = B * E;
  if (items == 0) return;
  causal_conv1d_step_kernel<<<cuda::blocks_for(items, 256, INT32_MAX), 256, 0, cuda::as_stream(stream)>>>(
      conv_state, x, weight, bias, y, items, E, K);
  cuda::check_launch("causal_conv1d_step_kernel");
}

void causal_conv1d_final_state_cuda(const float* x, const int64_t* lengths, float* state, int64_t B, int64_t L,
                                    int64_t E, int64_t K, void* stream) {
  const int64_t total = B * E * (K - 1);
  if (total == 0) return;
  causal_conv1d_final_state_kernel<<<cuda::blocks_for(total, 256, 65536), 256, 0, cuda::as_stream(stream)>>>(
      x, lengths, state, B, L, E, K);
  cuda::check_launch("causal_conv1d_final_state_kernel");
}

void selective_scan_step_cuda(float* ssm_state, const SelectiveScanStepPointers& in, float* out, int64_t B, int64_t E,
                              int64_t N, void* stream) {
  const int64_t items = B * E;
  if (items == 0) return;
  selective_scan_step_kernel<<<cuda::blocks_for(items, kWarpsPerBlock, INT32_MAX), 32 * kWarpsPerBlock, 0,
                               cuda::as_stream(stream)>>>(ssm_state, in, out, items, E, N);
  cuda::check_launch("selective_scan_step_kernel");
}

}  // namespace mr1
