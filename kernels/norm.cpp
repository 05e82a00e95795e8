// RMSNorm and LayerNorm on the CPU: one pass per row (T rows, parallel), per-row reductions in double.
// Shape letters: T tokens (leading axes flattened), D features.
#include "kernels/norm.h"

#include <cmath>
#include <string>
#include <vector>

#include <omp.h>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/norm_cuda.h"

namespace mr1 {

namespace {

// Checks x (..., D) against a weight (D) and returns D; `op` names the caller in the message.
int64_t check_norm_shapes(const char* op, const Tensor& x, const Tensor& weight) {
  check_shape(weight, {-1}, std::string(op) + ": weight");
  check_last_axis(x, weight.size(0), std::string(op) + ": x");
  return weight.size(0);
}

// out[j] += Σ_t term(t, j) over T rows, each sum accumulated in double in row order. Each thread owns a band
// of columns and walks the rows in memory order (a column at a time would stride through the rows and
// miss the cache on every term): no two threads write one value, and every sum is the same at any
// thread count.
template <typename Term>
void add_column_sums(int64_t rows, int64_t features, Term term, Tensor& out) {
#pragma omp parallel if (rows * features >= kParallelMinimumWork)
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = features * id / threads, end = features * (id + 1) / threads;
    std::vector<double> totals(end - begin, 0.0);
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = begin; j < end; ++j) totals[j - begin] += term(t, j);
    }
    for (int64_t j = begin; j < end; ++j) out[j] += static_cast<float>(totals[j - begin]);
  }
}

// A parameter gradient to accumulate into: the parameter's shape (D), on its device.
void check_gradient(const Tensor& grad, const Tensor& parameter, const std::string& what) {
  check_shape(grad, parameter.shape(), what);
  check_same_device(grad, parameter, what);
}

// Row t of a norm's input: x's own, or, with delta, the row of sum = x + delta, written here first.
const float* input_row(const Tensor& x, const Tensor* delta, Tensor* sum, int64_t t, int64_t features) {
  const float* in = x.data() + t * features;
  if (!delta) return in;
  float* added = sum->data() + t * features;
  const float* d = delta->data() + t * features;
  for (int64_t j = 0; j < features; ++j) added[j] = in[j] + d[j];
  return added;
}

// y[t] = x[t] / √(mean_j x[t, j]² + eps) · weight,   inv_rms[t] = 1/√(mean_j x[t, j]² + eps): of x, or of
// sum = x + delta (written) when delta is given.
Tensor rmsnorm_rows(const Tensor& x, const Tensor* delta, const Tensor& weight, Tensor* sum, Tensor* inv_rms) {
  const int64_t features = check_norm_shapes("rmsnorm_forward", x, weight);
  const int64_t rows = row_count(x);
  if (delta) check_shape(*delta, x.shape(), "rmsnorm_forward: delta");
  const Device device = common_device("rmsnorm_forward", {&x, &weight, delta});
  if (delta) *sum = Tensor::empty(x.shape(), device);
  if (device == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda), saved = Tensor::empty({rows}, Device::cuda);
    rmsnorm_forward_cuda(x.data(), weight.data(), y.data(), saved.data(), rows, features, cuda::stream(),
                         delta ? delta->data() : nullptr, delta ? sum->data() : nullptr);
    if (inv_rms) *inv_rms = saved;
    return y;
  }
  Tensor y = Tensor::empty(x.shape());
  Tensor saved = Tensor::empty({rows});
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* in = input_row(x, delta, sum, t, features);
    float* out = y.data() + t * features;
    double squares = 0;
    for (int64_t j = 0; j < features; ++j) squares += double(in[j]) * in[j];
    const float r = static_cast<float>(1.0 / std::sqrt(squares / features + kNormEpsilon));
    for (int64_t j = 0; j < features; ++j) out[j] = in[j] * r * weight[j];
    saved[t] = r;
  }
  if (inv_rms) *inv_rms = saved;
  return y;
}

}  // namespace

Tensor rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor* inv_rms) {
  return rmsnorm_rows(x, nullptr, weight, nullptr, inv_rms);
}

Tensor rmsnorm_forward_after_add(const Tensor& x, const Tensor& delta, const Tensor& weight, Tensor& sum,
                                 Tensor* inv_rms) {
  return rmsnorm_rows(x, &delta, weight, &sum, inv_rms);
}

// With g = dy ⊙ weight and r = inv_rms[t]:
//   dL/dx[t, j] = r · (g[j] − x[t, j] · r² · Σ_i g[i] x[t, i] / D),   dL/dweight[j] = Σ_t dy[t, j] · x[t, j] · r[t]
void rmsnorm_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                 Tensor& grad_weight, Tensor& grad_x) {
  const int64_t features = check_norm_shapes("rmsnorm_backward", x, weight);
  const int64_t rows = row_count(x);
  check_shape(grad_y, x.shape(), "rmsnorm_backward: grad_y");
  check_shape(inv_rms, {rows}, "rmsnorm_backward: inv_rms");
  check_gradient(grad_weight, weight, "rmsnorm_backward: grad_weight");
  check_gradient(grad_x, x, "rmsnorm_backward: grad_x");
  if (common_device("rmsnorm_backward", {&grad_y, &x, &weight, &inv_rms}) == Device::cuda) {
    return rmsnorm_backward_cuda(grad_y.data(), x.data(), weight.data(), inv_rms.data(), grad_x.data(),
                                 grad_weight.data(), rows, features, cuda::stream());
  }
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* in = x.data() + t * features;
    const float* dy = grad_y.data() + t * features;
    float* dx = grad_x.data() + t * features;
    const double r = inv_rms[t];
    double projection = 0;  // Σ_i g[i] x[i]
    for (int64_t i = 0; i < features; ++i) projection += double(dy[i]) * weight[i] * in[i];
    const double coefficient = projection / features * r * r;
    for (int64_t j = 0; j < features; ++j) {
      dx[j] += static_cast<float>(r * (double(dy[j]) * weight[j] - in[j] * coefficient));
    }
  }
  add_column_sums(
      rows, features,
      [&](int64_t t, int64_t j) { return double(grad_y[t * features + j]) * x[t * features + j] * inv_rms[t]; },
      grad_weight);
}

RmsNormGrads rmsnorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& inv_rms) {
  check_norm_shapes("rmsnorm_backward", x, weight);
  RmsNormGrads grads{Tensor(x.shape(), x.device()), Tensor(weight.shape(), weight.device())};
  rmsnorm_backward_accumulate(grad_y, x, weight, inv_rms, grads.weight, grads.input);
  return grads;
}

namespace {

// μ[t] = mean_j x[t, j],  var[t] = mean_j (x[t, j] − μ[t])²,  s[t] = 1/√(var[t] + eps)
// y[t] = (x[t] − μ[t]) · s[t] · weight + bias;  saves mean = μ, inv_std = s: of x, or of sum = x + delta
// (written) when delta is given.
Tensor layernorm_rows(const Tensor& x, const Tensor* delta, const Tensor& weight, const Tensor& bias, Tensor* sum,
                      Tensor* mean, Tensor* inv_std) {
  const int64_t features = check_norm_shapes("layernorm_forward", x, weight);
  check_shape(bias, {features}, "layernorm_forward: bias");
  const int64_t rows = row_count(x);
  if (delta) check_shape(*delta, x.shape(), "layernorm_forward: delta");
  const Device device = common_device("layernorm_forward", {&x, &weight, &bias, delta});
  if (delta) *sum = Tensor::empty(x.shape(), device);
  if (device == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda), saved_mean = Tensor::empty({rows}, Device::cuda),
           saved_inv_std = Tensor::empty({rows}, Device::cuda);
    layernorm_forward_cuda(x.data(), weight.data(), bias.data(), y.data(), saved_mean.data(), saved_inv_std.data(),
                           rows, features, cuda::stream(), delta ? delta->data() : nullptr,
                           delta ? sum->data() : nullptr);
    if (mean) *mean = saved_mean;
    if (inv_std) *inv_std = saved_inv_std;
    return y;
  }
  Tensor y = Tensor::empty(x.shape());
  Tensor saved_mean = Tensor::empty({rows});
  Tensor saved_inv_std = Tensor::empty({rows});
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* in = input_row(x, delta, sum, t, features);
    float* out = y.data() + t * features;
    double total = 0;
    for (int64_t j = 0; j < features; ++j) total += in[j];
    const double mu = total / features;
    double squares = 0;
    for (int64_t j = 0; j < features; ++j) squares += (in[j] - mu) * (in[j] - mu);
    const double s = 1.0 / std::sqrt(squares / features + kNormEpsilon);
    for (int64_t j = 0; j < features; ++j) out[j] = static_cast<float>((in[j] - mu) * s) * weight[j] + bias[j];
    saved_mean[t] = static_cast<float>(mu);
    saved_inv_std[t] = static_cast<float>(s);
  }
  if (mean) *mean = saved_mean;
  if (inv_std) *inv_std = saved_inv_std;
  return y;
}

}  // namespace

Tensor layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor* mean, Tensor* inv_std) {
  return layernorm_rows(x, nullptr, weight, bias, nullptr, mean, inv_std);
}

Tensor layernorm_forward_after_add(const Tensor& x, const Tensor& delta, const Tensor& weight, const Tensor& bias,
                                   Tensor& sum, Tensor* mean, Tensor* inv_std) {
  return layernorm_rows(x, &delta, weight, bias, &sum, mean, inv_std);
}

// With x̂ = (x − μ) s and g = dy ⊙ weight:
//   dL/dx[t] = s · (g − mean_j g[j] − x̂ · mean_j g[j] x̂[j]),  dL/dweight = Σ_t dy ⊙ x̂,  dL/dbias = Σ_t dy
void layernorm_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                   const Tensor& inv_std, Tensor& grad_weight, Tensor& grad_bias, Tensor& grad_x) {
  const int64_t features = check_norm_shapes("layernorm_backward", x, weight);
  const int64_t rows = row_count(x);
  check_shape(grad_y, x.shape(), "layernorm_backward: grad_y");
  check_shape(mean, {rows}, "layernorm_backward: mean");
  check_shape(inv_std, {rows}, "layernorm_backward: inv_std");
  check_gradient(grad_weight, weight, "layernorm_backward: grad_weight");
  check_gradient(grad_bias, weight, "layernorm_backward: grad_bias");
  check_gradient(grad_x, x, "layernorm_backward: grad_x");
  if (common_device("layernorm_backward", {&grad_y, &x, &weight, &mean, &inv_std}) == Device::cuda) {
    return layernorm_backward_cuda(grad_y.data(), x.data(), weight.data(), mean.data(), inv_std.data(),
                                   grad_x.data(), grad_weight.data(), grad_bias.data(), rows, features,
                                   cuda::stream());
  }
  auto normalized = [&](int64_t t, int64_t j) { return (double(x[t * features + j]) - mean[t]) * inv_std[t]; };
  // In double: g − mean(g) cancels, and s = 1/√(var + eps) magnifies what is left up to 1/√eps ≈ 316 times.
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* dy = grad_y.data() + t * features;
    float* dx = grad_x.data() + t * features;
    double g_total = 0;       // Σ_j g[j]
    double g_projection = 0;  // Σ_j g[j] x̂[j]
    for (int64_t j = 0; j < features; ++j) {
      const double g = double(dy[j]) * weight[j];
      g_total += g;
      g_projection += g * normalized(t, j);
    }
    const double g_mean = g_total / features;
    const double projection_mean = g_projection / features;
    for (int64_t j = 0; j < features; ++j) {
      const double g = double(dy[j]) * weight[j];
      dx[j] += static_cast<float>(inv_std[t] * (g - g_mean - normalized(t, j) * projection_mean));
    }
  }
  add_column_sums(
      rows, features, [&](int64_t t, int64_t j) { return double(grad_y[t * features + j]) * normalized(t, j); },
      grad_weight);
  add_column_sums(rows, features, [&](int64_t t, int64_t j) { return double(grad_y[t * features + j]); }, grad_bias);
}

LayerNormGrads layernorm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                  const Tensor& inv_std) {
  check_norm_shapes("layernorm_backward", x, weight);
  LayerNormGrads grads{Tensor(x.shape(), x.device()), Tensor(weight.shape(), weight.device()),
                       Tensor(weight.shape(), weight.device())};
  layernorm_backward_accumulate(grad_y, x, weight, mean, inv_std, grads.weight, grads.bias, grads.input);
  return grads;
}

}  // namespace mr1
