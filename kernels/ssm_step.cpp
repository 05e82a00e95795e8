// The single-step ops of the Mamba mixer. On the CPU: plain loops over (batch row, channel), the state
// index n vectorised with Eigen arrays; the formulas repeat those of causal_conv1d_forward and
// selective_scan_forward at one position, in the same order, so that step mode follows the parallel
// forward to rounding. Device tensors go to the kernels of kernels/ssm_step.cu.
// Shape letters: B batch, L length, E channels (d_inner), N state size (d_state), K kernel width (d_conv).
#include "kernels/ssm_step.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/selective_scan.h"
#include "kernels/ssm_step_cuda.h"

namespace mr1 {

namespace {

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// Below this many elements a step op runs on one thread (see selective_scan_step).
constexpr int64_t kStepParallelMinimumWork = int64_t{1} << 18;

bool present(const Tensor* tensor) { return tensor && tensor->defined(); }

// The kernel width K of a conv weight (E, 1, K) or (E, K), checked against E.
int64_t conv_width(const Tensor& weight, int64_t channels, const char* op) {
  if (weight.rank() == 3) {
    check_shape(weight, {channels, 1, -1}, std::string(op) + ": weight");
  } else if (weight.rank() == 2) {
    check_shape(weight, {channels, -1}, std::string(op) + ": weight");
  } else {
    throw ShapeError(std::string(op) + ": weight: expected shape (" + std::to_string(channels) + ", 1, K) or (" +
                     std::to_string(channels) + ", K), found " + weight.shape_string());
  }
  const int64_t width = weight.size(-1);
  if (width < 1) {
    throw ShapeError(std::string(op) + ": weight: kernel width K must be at least 1, found " + weight.shape_string());
  }
  return width;
}

}  // namespace

// y[b, e] = bias[e] + Σ_{k<K−1} weight[e, k] · conv_state[b, e, k] + weight[e, K−1] · x[b, e]
// conv_state[b, e, :] ← (conv_state[b, e, 1:], x[b, e])
Tensor causal_conv1d_step(Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_shape(x, {-1, -1}, "causal_conv1d_step: x");
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t K = conv_width(weight, channels, "causal_conv1d_step");
  check_shape(bias, {channels}, "causal_conv1d_step: bias");
  check_shape(conv_state, {batch, channels, K - 1}, "causal_conv1d_step: conv_state (B, E, K-1)");
  if (common_device("causal_conv1d_step", {&conv_state, &x, &weight, &bias}) == Device::cuda) {
    Tensor y = Tensor::empty({batch, channels}, Device::cuda);
    causal_conv1d_step_cuda(conv_state.data(), x.data(), weight.data(), bias.data(), y.data(), batch, channels, K,
                            cuda::stream());
    return y;
  }
  const float* input = x.data();     // (B, E)
  const float* taps = weight.data();  // (E, K)
  const float* bias_data = bias.data();
  float* state = conv_state.data();  // (B, E, K−1)
  Tensor y = Tensor::empty({batch, channels});
  float* output = y.data();  // (B, E)

#pragma omp parallel for schedule(static) if (batch * channels * K >= kStepParallelMinimumWork)
  for (int64_t item = 0; item < batch * channels; ++item) {
    const int64_t e = item % channels;
    const float* w = taps + e * K;
    float* window = state + item * (K - 1);  // x of tokens t−K+1 .. t−1
    // The same order of sums as causal_conv1d_forward: bias, then the taps oldest first.
    float sum = bias_data[e];
    for (int64_t k = 0; k < K - 1; ++k) sum += w[k] * window[k];
    sum += w[K - 1] * input[item];
    output[item] = sum;
    for (int64_t k = 0; k + 1 < K - 1; ++k) window[k] = window[k + 1];
    if (K > 1) window[K - 2] = input[item];
  }
  return y;
}

std::vector<int64_t> prompt_lengths(const std::vector<uint8_t>* mask, int64_t batch, int64_t length) {
  if (!mask) return std::vector<int64_t>(static_cast<size_t>(batch), length);
  if (static_cast<int64_t>(mask->size()) != batch * length) {
    throw ShapeError("prompt_lengths: mask: expected " + std::to_string(batch * length) + " entries (B·L), found " +
                     std::to_string(mask->size()));
  }
  std::vector<int64_t> lengths(static_cast<size_t>(batch), 0);
  for (int64_t b = 0; b < batch; ++b) {
    const uint8_t* row = mask->data() + b * length;
    int64_t kept = 0;
    while (kept < length && row[kept] != 0) ++kept;
    for (int64_t l = kept; l < length; ++l) {
      if (row[l] != 0) {
        throw ShapeError("prompt_lengths: mask row " + std::to_string(b) + " keeps position " + std::to_string(l) +
                         " after dropping position " + std::to_string(kept) +
                         ": a batch of prompts is right-padded, each row 1s then 0s");
      }
    }
    if (kept == 0) {
      throw ShapeError("prompt_lengths: mask row " + std::to_string(b) + " keeps no position: an empty prompt");
    }
    lengths[static_cast<size_t>(b)] = kept;
  }
  return lengths;
}

// conv_state[b, e, k] = x[b, len_b − (K−1) + k, e]   (0 where len_b − (K−1) + k < 0)
Tensor causal_conv1d_final_state(const Tensor& x, int64_t width, const std::vector<int64_t>* lengths) {
  check_shape(x, {-1, -1, -1}, "causal_conv1d_final_state: x");
  if (width < 1) {
    throw ShapeError("causal_conv1d_final_state: kernel width K must be at least 1, found " + std::to_string(width));
  }
  const int64_t batch = x.size(0), L = x.size(1), channels = x.size(2), K = width;
  if (lengths) {
    if (static_cast<int64_t>(lengths->size()) != batch) {
      throw ShapeError("causal_conv1d_final_state: lengths: expected " + std::to_string(batch) +
                       " prompt lengths (B), found " + std::to_string(lengths->size()));
    }
    for (int64_t length : *lengths) {
      if (length < 1 || length > L) {
        throw ShapeError("causal_conv1d_final_state: lengths: expected each in [1, " + std::to_string(L) + "], found " +
                         std::to_string(length));
      }
    }
  }
  if (common_device("causal_conv1d_final_state", {&x}) == Device::cuda) {
    Tensor state({batch, channels, K - 1}, Device::cuda);
    const cuda::DeviceBuffer device_lengths =
        cuda::upload(lengths ? *lengths : std::vector<int64_t>(static_cast<size_t>(batch), L));
    causal_conv1d_final_state_cuda(x.data(), device_lengths.as<int64_t>(), state.data(), batch, L, channels, K,
                                   cuda::stream());
    return state;
  }
  Tensor state({batch, channels, K - 1});
  const float* input = x.data();
  float* out = state.data();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = lengths ? (*lengths)[static_cast<size_t>(b)] : L;
    for (int64_t k = 0; k < K - 1; ++k) {
      const int64_t t = length - (K - 1) + k;
      if (t < 0) continue;  // zero: before the sequence start
      const float* row = input + (b * L + t) * channels;
      for (int64_t e = 0; e < channels; ++e) out[(b * channels + e) * (K - 1) + k] = row[e];
    }
  }
  return state;
}

// Δ = softplus(delta + delta_bias);  h ← exp(Δ A) h + Δ u B;  y = h · C + D u;  out = y ⊙ silu(z)
Tensor selective_scan_step(Tensor& ssm_state, const SelectiveScanStepInputs& in) {
  require_scan_inputs(in, "selective_scan_step");
  check_shape(*in.u, {-1, -1}, "selective_scan_step: u");
  const int64_t batch = in.u->size(0), E = in.u->size(1);
  check_shape(*in.A, {E, -1}, "selective_scan_step: A");
  const int64_t N = in.A->size(1);
  check_shape(*in.delta, {batch, E}, "selective_scan_step: delta");
  check_shape(*in.B, {batch, N}, "selective_scan_step: B");
  check_shape(*in.C, {batch, N}, "selective_scan_step: C");
  if (present(in.D)) check_shape(*in.D, {E}, "selective_scan_step: D");
  if (present(in.z)) check_shape(*in.z, {batch, E}, "selective_scan_step: z");
  if (present(in.delta_bias)) check_shape(*in.delta_bias, {E}, "selective_scan_step: delta_bias");
  check_shape(ssm_state, {batch, E, N}, "selective_scan_step: ssm_state (B, E, N)");
  if (common_device("selective_scan_step", {&ssm_state, in.u, in.delta, in.A, in.B, in.C, in.D, in.z,
                                            in.delta_bias}) == Device::cuda) {
    Tensor out = Tensor::empty({batch, E}, Device::cuda);
    const auto pointer = [](const Tensor* t) { return present(t) ? t->data() : nullptr; };
    const SelectiveScanStepPointers pointers{in.u->data(),    in.delta->data(), in.A->data(),
                                             in.B->data(),    in.C->data(),     pointer(in.D),
                                             pointer(in.z),   pointer(in.delta_bias), in.delta_softplus};
    selective_scan_step_cuda(ssm_state.data(), pointers, out.data(), batch, E, N, cuda::stream());
    return out;
  }

  const float* A = in.A->data();
  const float* D = present(in.D) ? in.D->data() : nullptr;
  const float* bias = present(in.delta_bias) ? in.delta_bias->data() : nullptr;
  const float* z = present(in.z) ? in.z->data() : nullptr;
  float* state = ssm_state.data();
  Tensor out = Tensor::empty({batch, E});

  // Δ for every (b, e) at once: softplus(v) = max(v, 0) + log1p(exp(−|v|)), as selective_scan_forward
  // writes it (exp never overflows).
  Eigen::ArrayXXf delta = matrix_of_rows(*in.delta).array();  // (B, E)
  if (bias) delta.rowwise() += row_vector(*in.delta_bias).array();
  if (in.delta_softplus) delta = delta.max(0.0f) + (-delta.abs()).exp().log1p();

  // Threads only for wide batches: at batch 1 (E·N ~ 25k cheap vector operations, some 10 µs) waking
  // them costs more than it saves, and between the steps' one-thread matrix-vector products they would
  // spin on cores that the products need.
#pragma omp parallel for schedule(static) if (batch * E * N >= kStepParallelMinimumWork)
  for (int64_t item = 0; item < batch * E; ++item) {
    const int64_t b = item / E, e = item % E;
    const float step = delta(b, e);
    const float u = (*in.u)[item];
    ArrayMap h(state + item * N, N);
    const ConstArrayMap A_row(A + e * N, N);
    const ConstArrayMap B_row(in.B->data() + b * N, N);
    const ConstArrayMap C_row(in.C->data() + b * N, N);
    // h ← exp(Δ A) ⊙ h + (Δ u) B;   y = h · C + D u
    h = (step * A_row).exp() * h + (step * u) * B_row;
    float y = (h * C_row).sum();
    if (D) y += D[e] * u;
    if (z) {
      // y ⊙ silu(z) = y · z · σ(z),   σ(z) = 1 / (1 + exp(−z))
      const float gate = z[item];
      y *= gate * (1.0f / (1.0f + std::exp(-gate)));
    }
    out[item] = y;
  }
  return out;
}

}  // namespace mr1
