// Causal depthwise conv1d on the CPU, forward and backward: plain loops over channels-last
// tensors, the channel loop innermost so that it vectorises.
// Shape letters: B batch, L length, E channels (d_inner), K kernel width (d_conv).
#include "kernels/conv1d.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/conv1d_cuda.h"
#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"

namespace mr1 {

namespace {

// Channels per work item: 64 floats, four cache lines of each row.
constexpr int64_t kChannelBlock = 64;

struct ConvShape {
  int64_t batch, length, channels, width;  // B, L, E, K
};

// Checks x (B, L, E), weight (E, 1, K) or (E, K) and, when given, bias (E); returns B, L, E, K.
ConvShape check_conv_inputs(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  check_shape(x, {-1, -1, -1}, "causal_conv1d: x");
  const int64_t channels = x.size(2);
  if (weight.rank() == 3) {
    check_shape(weight, {channels, 1, -1}, "causal_conv1d: weight");
  } else if (weight.rank() == 2) {
    check_shape(weight, {channels, -1}, "causal_conv1d: weight");
  } else {
    throw ShapeError("causal_conv1d: weight: expected shape (" + std::to_string(channels) + ", 1, K) or (" +
                     std::to_string(channels) + ", K), found " + weight.shape_string());
  }
  const int64_t width = weight.size(-1);
  if (width < 1) throw ShapeError("causal_conv1d: weight: kernel width K must be at least 1, found " + weight.shape_string());
  if (bias) check_shape(*bias, {channels}, "causal_conv1d: bias");
  return {x.size(0), x.size(1), channels, width};
}

// The weight (E, K) transposed to (K, E), so that each tap is contiguous over channels.
std::vector<float> taps_by_channel(const Tensor& weight, int64_t channels, int64_t width) {
  std::vector<float> taps(width * channels);
  const float* w = weight.data();
  for (int64_t e = 0; e < channels; ++e) {
    for (int64_t k = 0; k < width; ++k) taps[k * channels + e] = w[e * width + k];
  }
  return taps;
}

int64_t channel_blocks(int64_t channels) { return (channels + kChannelBlock - 1) / kChannelBlock; }

}  // namespace

// y[b, t, e] = bias[e] + Σ_k weight[e, k] · x[b, t − K + 1 + k, e]     (x[b, <0, e] = 0)
Tensor causal_conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const ConvShape s = check_conv_inputs(x, weight, &bias);
  const int64_t L = s.length, E = s.channels, K = s.width;
  if (common_device("causal_conv1d", {&x, &weight, &bias}) == Device::cuda) {
    Tensor y = Tensor::empty({s.batch, L, E}, Device::cuda);
    causal_conv1d_forward_cuda(x.data(), weight.data(), bias.data(), y.data(), s.batch, L, E, K, cuda::stream());
    return y;
  }
  const std::vector<float> taps = taps_by_channel(weight, E, K);
  const float* input = x.data();
  const float* bias_data = bias.data();
  Tensor y = Tensor::empty({s.batch, L, E});
  float* output = y.data();
  const int64_t blocks = channel_blocks(E);

#pragma omp parallel for schedule(static) if (s.batch * L * E * K >= (int64_t{1} << 15))
  for (int64_t item = 0; item < s.batch * blocks; ++item) {
    const int64_t b = item / blocks;
    const int64_t first = item % blocks * kChannelBlock;
    const int64_t last = std::min(E, first + kChannelBlock);
    for (int64_t t = 0; t < L; ++t) {
      float* out = output + (b * L + t) * E;
      for (int64_t e = first; e < last; ++e) out[e] = bias_data[e];
      for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
        const float* in = input + (b * L + t - K + 1 + k) * E;
        const float* tap = taps.data() + k * E;
#pragma omp simd
        for (int64_t e = first; e < last; ++e) out[e] += tap[e] * in[e];
      }
    }
  }
  return y;
}

// dx[b, s, e]   = Σ_k weight[e, k] · dy[b, s + K − 1 − k, e]      (over s + K − 1 − k < L)
// dweight[e, k] = Σ_{b,t} dy[b, t, e] · x[b, t − K + 1 + k, e]
// dbias[e]      = Σ_{b,t} dy[b, t, e]
// Parallel over channel blocks only, each holding its channels' weight and bias gradients for
// every batch row: no reduction across threads is needed.
Tensor causal_conv1d_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                         Tensor& grad_weight, Tensor& grad_bias) {
  const ConvShape s = check_conv_inputs(x, weight, nullptr);
  check_shape(grad_y, x.shape(), "causal_conv1d: grad_y");
  const int64_t L = s.length, E = s.channels, K = s.width;
  check_shape(grad_weight, weight.shape(), "causal_conv1d: grad_weight");
  check_same_device(grad_weight, weight, "causal_conv1d: grad_weight");
  check_shape(grad_bias, {E}, "causal_conv1d: grad_bias");
  check_same_device(grad_bias, weight, "causal_conv1d: grad_bias");
  if (common_device("causal_conv1d", {&grad_y, &x, &weight}) == Device::cuda) {
    Tensor grad_x = Tensor::empty(x.shape(), Device::cuda);
    causal_conv1d_backward_cuda(grad_y.data(), x.data(), weight.data(), grad_x.data(), grad_weight.data(),
                                grad_bias.data(), s.batch, L, E, K, cuda::stream());
    return grad_x;
  }
  const std::vector<float> taps = taps_by_channel(weight, E, K);
  std::vector<float> tap_grads(K * E);  // (K, E), transposed back below
  std::vector<float> bias_grads(E);
  Tensor grad_x(x.shape());
  const float* input = x.data();
  const float* dy = grad_y.data();
  float* dx = grad_x.data();
  const int64_t blocks = channel_blocks(E);

#pragma omp parallel for schedule(static) if (s.batch * L * E * K >= (int64_t{1} << 15))
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kChannelBlock;
    const int64_t width = std::min(E, first + kChannelBlock) - first;
    // The block's sums stay in its own arrays until the end: written in place, the cache lines where two
    // blocks meet would pass between the threads at every step.
    alignas(64) float dbias[kChannelBlock] = {};
    std::vector<float> dtaps(K * kChannelBlock, 0.0f);  // (K, block)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t t = 0; t < L; ++t) {
        const float* dy_row = dy + (b * L + t) * E + first;
        for (int64_t e = 0; e < width; ++e) dbias[e] += dy_row[e];
        // y[t] reads x[t − K + 1 + k]: scatter dy[t] back to those rows, and collect dweight.
        for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
          const int64_t source = (b * L + t - K + 1 + k) * E + first;
          const float* tap = taps.data() + k * E + first;
          float* tap_grad = dtaps.data() + k * kChannelBlock;
#pragma omp simd
          for (int64_t e = 0; e < width; ++e) {
            dx[source + e] += tap[e] * dy_row[e];
            tap_grad[e] += dy_row[e] * input[source + e];
          }
        }
      }
    }
    for (int64_t e = 0; e < width; ++e) {
      bias_grads[first + e] = dbias[e];
      for (int64_t k = 0; k < K; ++k) tap_grads[k * E + first + e] = dtaps[k * kChannelBlock + e];
    }
  }
  float* dweight = grad_weight.data();
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t k = 0; k < K; ++k) dweight[e * K + k] += tap_grads[k * E + e];
    grad_bias[e] += bias_grads[e];
  }
  return grad_x;
}

CausalConv1dGrads causal_conv1d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight) {
  CausalConv1dGrads grads;
  grads.weight = Tensor(weight.shape(), weight.device());
  grads.bias = Tensor({weight.size(0)}, weight.device());
  grads.input = causal_conv1d_backward_accumulate(grad_y, x, weight, grads.weight, grads.bias);
  return grads;
}

}  // namespace mr1
