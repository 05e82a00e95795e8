// Activations and the softmax family on the CPU: plain loops or Eigen array expressions (vectorised exp),
// parallel over values or rows.
// Shape letters: T rows (all leading axes flattened), F features (the last axis).
#include "kernels/activation.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <string>

#include "kernels/activation_cuda.h"
#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"

namespace mr1 {

namespace {

constexpr float kInverseSqrt2Pi = 0.39894228040143268f;

// σ(x) = 1 / (1 + exp(−x)), written so that exp never overflows.
float stable_sigmoid(float x) {
  if (x >= 0) return 1.0f / (1.0f + std::exp(-x));
  const float e = std::exp(x);
  return e / (1.0f + e);
}

// The CUDA launchers of the elementwise activations, with the CPU's argument order.
using MapLauncher = void (*)(const float* x, float* y, int64_t n, void* stream);
using GradientLauncher = void (*)(const float* grad_y, const float* saved, float* grad_x, int64_t n, void* stream);

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// chunk(begin, count) over [0, n) in fixed chunks of 8192 values, in parallel for large n. The chunks do not
// depend on the thread count: Eigen's vectorised functions (exp, log1p) round a chunk's scalar tail
// otherwise than its packets, so chunks cut by the thread count would give other bits at another count.
template <typename Chunk>
void for_each_chunk(int64_t n, Chunk chunk) {
  for_each_piece(n, 8192, n >= kParallelMinimumWork, chunk);
}

// y = f(x) over Eigen arrays: `f(in, out)` assigns an array expression of `in` to `out` (vectorised, as
// Eigen's exp is), chunk by chunk; or `launcher` on CUDA tensors.
template <typename ArrayFunction>
Tensor map_arrays(const char* op, const Tensor& x, ArrayFunction f, MapLauncher launcher) {
  if (common_device(op, {&x}) == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda);
    launcher(x.data(), y.data(), x.numel(), cuda::stream());
    return y;
  }
  Tensor y = Tensor::empty(x.shape());
  for_each_chunk(x.numel(), [&](int64_t begin, int64_t n) {
    ArrayMap out(y.data() + begin, n);
    f(ConstArrayMap(x.data() + begin, n), out);
  });
  return y;
}

// dx = f(dy, saved, dx) over Eigen arrays, as map_arrays; `saved` is what the forward kept.
template <typename ArrayFunction>
Tensor map_array_gradient(const char* op, const Tensor& grad_y, const Tensor& saved, ArrayFunction f,
                          GradientLauncher launcher) {
  check_shape(grad_y, saved.shape(), std::string(op) + ": grad_y");
  if (common_device(op, {&grad_y, &saved}) == Device::cuda) {
    Tensor grad_x = Tensor::empty(saved.shape(), Device::cuda);
    launcher(grad_y.data(), saved.data(), grad_x.data(), saved.numel(), cuda::stream());
    return grad_x;
  }
  Tensor grad_x = Tensor::empty(saved.shape());
  for_each_chunk(saved.numel(), [&](int64_t begin, int64_t n) {
    ArrayMap out(grad_x.data() + begin, n);
    f(ConstArrayMap(grad_y.data() + begin, n), ConstArrayMap(saved.data() + begin, n), out);
  });
  return grad_x;
}

// y[i] = f(x[i]), one value at a time (for functions without an Eigen array form).
template <typename Function>
Tensor map_values(const char* op, const Tensor& x, Function f, MapLauncher launcher) {
  return map_arrays(
      op, x,
      [&](const auto& in, auto& out) {
        for (Eigen::Index i = 0; i < in.size(); ++i) out[i] = f(in[i]);
      },
      launcher);
}

// erfc(a) = t · exp(−a² + P(u)) for a >= 0, t = 1 / (1 + a/2), u = (2t − (1 + kErfcLeastT)) / (1 − kErfcLeastT),
// P in powers of u: fitted by scripts/fit_normal_cdf.py on a in [0, 10.5] (u in [−1, 1]), relative error
// 1.3e-12 in double. Past 10.5, u is held at −1 (x · Φ(x) rounds to 0 in float there).
constexpr double kErfcLeastT = 0.16;
constexpr double kErfcPowers[] = {
    -0.5631567855931883,    0.5746099743337246,     0.01671605759365507,  -0.030147660845445352,
    -0.001230678091052731,  0.003877185353963848,   -0.00026753376864967703, -0.0005871301687720736,
    0.00015470462153224513, 7.348873596244279e-05,  -4.579543319905333e-05, -2.8991698014996615e-06,
    9.433029036893293e-06,  -1.47721826552884e-06,  -1.276454506955516e-06, 3.0868044786861706e-07,
    8.439567494472767e-08,
};

// y[i] = x[i] · Φ(x[i]) over n values, in double and rounded once: Φ(x) = 1 − ½ erfc(x/√2) for x > 0, else
// ½ erfc(|x|/√2), so no digit is lost to cancellation in either tail. Blocks of plain loops that the compiler
// vectorises around Eigen's vectorised exp (glibc's erfcf, one value at a time, took 10 times as long).
// Every result is within half an ulp of x·Φ(x) but for its 1.3e-12, and −inf gives NaN (−inf · 0).
void gelu_values(const float* x, float* y, int64_t n) {
  constexpr int64_t kBlock = 256;
  constexpr int kDegree = static_cast<int>(std::size(kErfcPowers)) - 1;
  alignas(64) double t[kBlock], exponent[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t m = std::min(kBlock, n - start);
    const float* in = x + start;
    for (int64_t i = 0; i < m; ++i) {
      const double a = std::fabs(double(in[i])) * 0.70710678118654752440;
      t[i] = 1.0 / (1.0 + 0.5 * a);
      const double u = std::max(-1.0, (2.0 * t[i] - (1.0 + kErfcLeastT)) / (1.0 - kErfcLeastT));
      double p = kErfcPowers[kDegree];
      for (int k = kDegree - 1; k >= 0; --k) p = p * u + kErfcPowers[k];
      exponent[i] = p - a * a;
    }
    Eigen::Map<Eigen::ArrayXd> e(exponent, m);
    e = e.exp();
    for (int64_t i = 0; i < m; ++i) {
      const double v = in[i], half_erfc = 0.5 * t[i] * exponent[i];
      y[start + i] = static_cast<float>(v * (v > 0 ? 1.0 - half_erfc : half_erfc));
    }
  }
}

// max_j row[j] over F values (−inf for an empty row).
float row_max(const float* row, int64_t features) {
  float largest = -INFINITY;
  for (int64_t j = 0; j < features; ++j) largest = std::max(largest, row[j]);
  return largest;
}

}  // namespace

// gelu(x) = x · Φ(x) = ½ x erfc(−x/√2), correctly rounded but for 1.3e-12 (gelu_values): ½ x (1 + erf(x/√2))
// in float would lose Φ's digits to cancellation as x falls below 0 (all of them below about −5.9).
Tensor gelu_forward(const Tensor& x) {
  return map_arrays(
      "gelu_forward", x, [](const auto& in, auto& out) { gelu_values(in.data(), out.data(), in.size()); },
      gelu_forward_cuda);
}

// dL/dx = dy · (Φ(x) + x φ(x)),  φ(x) = exp(−x²/2)/√(2π),  Φ(x) = y / x (½ at x = 0)
// y / x is as accurate as ½ erfc(−x/√2) in float (a few ulps), and the exp is vectorised, so the backward
// needs no erfc. (CUDA computes Φ with erfc in double and does not read y.)
Tensor gelu_backward(const Tensor& grad_y, const Tensor& x, const Tensor& y) {
  check_shape(grad_y, x.shape(), "gelu_backward: grad_y");
  check_shape(y, x.shape(), "gelu_backward: y");
  if (common_device("gelu_backward", {&grad_y, &x, &y}) == Device::cuda) {
    Tensor grad_x = Tensor::empty(x.shape(), Device::cuda);
    gelu_backward_cuda(grad_y.data(), x.data(), grad_x.data(), x.numel(), cuda::stream());
    return grad_x;
  }
  Tensor grad_x = Tensor::empty(x.shape());
  for_each_chunk(x.numel(), [&](int64_t begin, int64_t n) {
    const ConstArrayMap dy(grad_y.data() + begin, n), v(x.data() + begin, n), gelu(y.data() + begin, n);
    const Eigen::ArrayXf cdf = (v != 0.0f).select(gelu / v, 0.5f);
    ArrayMap(grad_x.data() + begin, n) = dy * (cdf + v * (kInverseSqrt2Pi * (-0.5f * v * v).exp()));
  });
  return grad_x;
}

// silu(x) = x · σ(x) = x / (1 + exp(−x)); where exp(−x) overflows to inf the quotient is the right 0.
Tensor silu_forward(const Tensor& x) {
  return map_arrays(
      "silu_forward", x, [](const auto& v, auto& y) { y = v / (1.0f + (-v).exp()); }, silu_forward_cuda);
}

// dL/dx = dy · σ(x) (1 + x (1 − σ(x))),  σ(x) = 1 / (1 + exp(−x))
Tensor silu_backward(const Tensor& grad_y, const Tensor& x) {
  return map_array_gradient(
      "silu_backward", grad_y, x,
      [](const auto& dy, const auto& v, auto& dx) {
        const Eigen::ArrayXf s = 1.0f / (1.0f + (-v).exp());
        dx = dy * s * (1.0f + v * (1.0f - s));
      },
      silu_backward_cuda);
}

// sigmoid(x) = 1 / (1 + exp(−x))
Tensor sigmoid_forward(const Tensor& x) {
  return map_values("sigmoid_forward", x, stable_sigmoid, sigmoid_forward_cuda);
}

// y[t, i] = exp(x[t, i] − max x[t]) / Σ_j exp(x[t, j] − max x[t])     x, y (..., F)
// A row of all −inf has no distribution and gives NaN, as torch.softmax.
Tensor softmax_forward(const Tensor& x) {
  check_last_axis(x, -1, "softmax_forward: x");
  const int64_t rows = row_count(x);
  const int64_t features = x.size(-1);
  if (common_device("softmax_forward", {&x}) == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda);
    softmax_forward_cuda(x.data(), y.data(), rows, features, cuda::stream());
    return y;
  }
  Tensor y = Tensor::empty(x.shape());
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* in = x.data() + t * features;
    float* out = y.data() + t * features;
    const float largest = row_max(in, features);
    double total = 0;
    for (int64_t j = 0; j < features; ++j) {
      out[j] = std::exp(in[j] - largest);
      total += out[j];
    }
    const float inverse = static_cast<float>(1.0 / total);
    for (int64_t j = 0; j < features; ++j) out[j] *= inverse;
  }
  return y;
}

// dL/dx[t, i] = y[t, i] (dy[t, i] − Σ_j dy[t, j] y[t, j])
Tensor softmax_backward(const Tensor& grad_y, const Tensor& y) {
  check_last_axis(y, -1, "softmax_backward: y");
  check_shape(grad_y, y.shape(), "softmax_backward: grad_y");
  const int64_t rows = row_count(y);
  const int64_t features = y.size(-1);
  if (common_device("softmax_backward", {&grad_y, &y}) == Device::cuda) {
    Tensor grad_x = Tensor::empty(y.shape(), Device::cuda);
    softmax_backward_cuda(grad_y.data(), y.data(), grad_x.data(), rows, features, cuda::stream());
    return grad_x;
  }
  Tensor grad_x = Tensor::empty(y.shape());
#pragma omp parallel for if (y.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* dy = grad_y.data() + t * features;
    const float* probabilities = y.data() + t * features;
    float* dx = grad_x.data() + t * features;
    double dot = 0;
    for (int64_t j = 0; j < features; ++j) dot += double(dy[j]) * probabilities[j];
    for (int64_t j = 0; j < features; ++j) dx[j] = probabilities[j] * (dy[j] - static_cast<float>(dot));
  }
  return grad_x;
}

// out[t] = max x[t] + log Σ_j exp(x[t, j] − max x[t])     x (..., F) → out (...)
// A row whose max is ±inf or NaN returns that max (−inf for a row of all −inf, as torch.logsumexp).
Tensor logsumexp_forward(const Tensor& x) {
  check_last_axis(x, -1, "logsumexp_forward: x");
  const int64_t rows = row_count(x);
  const int64_t features = x.size(-1);
  if (common_device("logsumexp_forward", {&x}) == Device::cuda) {
    Tensor out(Shape(x.shape().begin(), x.shape().end() - 1), Device::cuda);
    logsumexp_forward_cuda(x.data(), out.data(), rows, features, cuda::stream());
    return out;
  }
  Tensor out(Shape(x.shape().begin(), x.shape().end() - 1));
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* in = x.data() + t * features;
    const float largest = row_max(in, features);
    if (!std::isfinite(largest)) {
      out[t] = largest;
      continue;
    }
    double total = 0;
    for (int64_t j = 0; j < features; ++j) total += std::exp(double(in[j]) - largest);
    out[t] = static_cast<float>(largest + std::log(total));
  }
  return out;
}

}  // namespace mr1
