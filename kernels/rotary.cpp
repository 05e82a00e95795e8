// Rotary positional encoding on the CPU: each pair (x[j], x[j + D/2]) of a position turns by θ[l, j].
// Shape letters: B batch, L length, D features (even), H = D/2 pairs.
#include "kernels/rotary.h"

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/rotary_cuda.h"

namespace mr1 {

namespace {

constexpr double kRotaryBase = 10000.0;

// Throws ShapeError unless x is (B, L, D) with D even; `what` names the op and argument.
void check_rotary_shape(const Tensor& x, const std::string& what) {
  check_shape(x, {-1, -1, -1}, what);
  if (x.size(2) % 2 != 0) {
    throw ShapeError(what + ": expected an even last axis D (pairs x[j], x[j + D/2]), found shape " + x.shape_string());
  }
}

// y = x · cos(sign·θ) + rotate_half(x) · sin(sign·θ), θ[l, j] = (start + l) · 10000^(−2·(j mod H)/D).
// In pairs (a, b) = (x[j], x[j + H]), j < H:  y[j] = a cos − b sin,  y[j + H] = b cos + a sin.
// sign −1 turns the other way: the inverse, and the transpose, of sign +1.
// `op` and `argument` name the caller and its tensor in errors.
Tensor rotate(const char* op, const char* argument, const Tensor& x, int64_t start_position, double sign) {
  check_rotary_shape(x, std::string(op) + ": " + argument);
  const int64_t batch = x.size(0);
  const int64_t length = x.size(1);
  const int64_t features = x.size(2);
  const int64_t half = features / 2;
  if (common_device(op, {&x}) == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda);
    rotate_cuda(x.data(), y.data(), batch, length, features, start_position, sign, cuda::stream());
    return y;
  }

  // cos θ[l, j] and sin θ[l, j] for j < H: the angle in double, so that large positions stay accurate.
  std::vector<float> cosines(static_cast<size_t>(length * half));
  std::vector<float> sines(cosines.size());
  for (int64_t l = 0; l < length; ++l) {
    for (int64_t j = 0; j < half; ++j) {
      const double frequency = std::pow(kRotaryBase, -2.0 * static_cast<double>(j) / static_cast<double>(features));
      const double angle = sign * static_cast<double>(start_position + l) * frequency;
      cosines[l * half + j] = static_cast<float>(std::cos(angle));
      sines[l * half + j] = static_cast<float>(std::sin(angle));
    }
  }

  Tensor y = Tensor::empty(x.shape());
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t row = 0; row < batch * length; ++row) {
    const int64_t l = row % length;
    const float* in = x.data() + row * features;
    float* out = y.data() + row * features;
    for (int64_t j = 0; j < half; ++j) {
      const float c = cosines[l * half + j];
      const float s = sines[l * half + j];
      const float a = in[j];
      const float b = in[j + half];
      out[j] = a * c - b * s;
      out[j + half] = b * c + a * s;
    }
  }
  return y;
}

}  // namespace

// y = x · cos θ + rotate_half(x) · sin θ     x, y (B, L, D)
Tensor rotary_forward(const Tensor& x, int64_t start_position) {
  return rotate("rotary_forward", "x", x, start_position, +1.0);
}

// dL/dx = dy · cos θ − rotate_half(dy) · sin θ: the rotation by −θ     grad_y, dL/dx (B, L, D)
Tensor rotary_backward(const Tensor& grad_y, int64_t start_position) {
  return rotate("rotary_backward", "grad_y", grad_y, start_position, -1.0);
}

}  // namespace mr1
