// Rotary positional encoding: a hand-worked rotation, the DESIGN.md formula in double on random inputs (also at
// large positions), backward against central finite differences, and the shape errors.
#include "kernels/rotary.h"

#include <cmath>
#include <functional>
#include <string>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

// Shapes (B, L, D) of the checks: one pair, one sequence, odd B and L, D/2 odd, and one above the threading
// threshold (16384 values), which is left out of the finite differences (numel² evaluations).
const Shape kShapes[] = {{1, 1, 2}, {1, 3, 4}, {2, 5, 6}, {3, 7, 10}, {4, 64, 66}};
const Shape kSmallShapes[] = {{1, 1, 2}, {1, 3, 4}, {2, 5, 6}, {3, 7, 10}};

// y = x · cos θ + rotate_half(x) · sin θ, rotate_half(x) = concat(−x[D/2:], x[:D/2]),
// θ[l, j] = (start + l) · 10000^(−2·(j mod D/2)/D), written as in DESIGN.md §2, in double.
std::vector<double> rotary_reference(const std::vector<double>& x, const Shape& shape, int64_t start) {
  const int64_t length = shape[1], features = shape[2], half = features / 2;
  std::vector<double> y(x.size());
  for (size_t row = 0; row < x.size() / features; ++row) {
    const int64_t l = static_cast<int64_t>(row) % length;
    const double* in = x.data() + row * features;
    for (int64_t j = 0; j < features; ++j) {
      const double rotated_half = j < half ? -in[j + half] : in[j - half];
      const double theta = double(start + l) * std::pow(10000.0, -2.0 * double(j % half) / double(features));
      y[row * features + j] = in[j] * std::cos(theta) + rotated_half * std::sin(theta);
    }
  }
  return y;
}

TEST_CASE("rotary: a hand-worked rotation") {
  // x (1, 2, 4) = [1, 2, 3, 4] at l = 0 and l = 1. At l = 0, θ = 0 and y = x.
  // At l = 1: θ[j] = 10000^(−2·(j mod 2)/4) = [1, 0.01, 1, 0.01]; rotate_half(x) = [−3, −4, 1, 2];
  // y = [cos 1 − 3 sin 1, 2 cos 0.01 − 4 sin 0.01, 3 cos 1 + sin 1, 4 cos 0.01 + 2 sin 0.01]
  //   = [−1.9841106486, 1.9599006675, 2.4623779024, 4.0197996683].
  const Tensor x = Tensor::from({1, 2, 4}, {1, 2, 3, 4, 1, 2, 3, 4});
  // float32 products and sums of values below 4: a few ulps.
  require_close(rotary_forward(x), {1, 2, 3, 4, -1.9841106486, 1.9599006675, 2.4623779024, 4.0197996683}, 1e-6, 0, "y");
  // Starting at position 1, the first row is turned as the second row was.
  require_close(rotary_forward(x, 1).reshape({2, 4}).slice_rows(0, 1),
                {-1.9841106486, 1.9599006675, 2.4623779024, 4.0197996683}, 1e-6, 0, "y from start 1");
}

TEST_CASE("rotary: forward matches the formula in double, at small and large positions") {
  uint64_t seed = 400;
  for (const Shape& shape : kShapes) {
    for (const int64_t start : {int64_t{0}, int64_t{3}, int64_t{100000}}) {
      INFO("shape " << shape_string(shape) << ", start " << start);
      const Tensor x = random_tensor(shape, ++seed);
      // cos and sin from a double angle, rounded to float32, then two float products and a sum of values <= 1:
      // a few ulps. An angle rounded to float32 would be off by 4e-3 at position 1e5, far outside this.
      require_close(rotary_forward(x, start), rotary_reference(to_double(x), shape, start), 1e-6, 0, "y");
    }
  }
}

TEST_CASE("rotary: backward matches finite differences and undoes the rotation") {
  uint64_t seed = 500;
  for (const Shape& shape : kSmallShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, ++seed);
    const Tensor grad_y = random_tensor(shape, ++seed);
    const std::vector<double> weights = to_double(grad_y);
    const int64_t start = 7;
    // The map is linear: differences are exact up to double rounding; float32 products of values <= 1 otherwise.
    const auto loss = [&](const std::vector<double>& v) {
      return weighted_sum(rotary_reference(v, shape, start), weights);
    };
    require_close(rotary_backward(grad_y, start), finite_difference(loss, to_double(x)), 1e-6, 0, "dL/dx");
    // Orthogonal: turning back by −θ returns x, up to float32 rounding of two rotations.
    require_close(rotary_backward(rotary_forward(x, start), start), x, 1e-6, 0, "backward(forward(x))");
  }
}

TEST_CASE("rotary rejects odd feature counts and wrong ranks, naming the argument") {
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"rotary_forward: x: expected an even",
       [] {
         rotary_forward(Tensor({1, 2, 5}));
       }},
      {"rotary_forward: x",
       [] {
         rotary_forward(Tensor({2, 4}));
       }},
      {"rotary_backward: grad_y: expected an even",
       [] {
         rotary_backward(Tensor({1, 2, 3}));
       }},
      {"rotary_backward: grad_y",
       [] {
         rotary_backward(Tensor({1, 1, 2, 4}));
       }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
