// Activations and the softmax family: hand-worked values, double-precision loops on random inputs, backward
// against central finite differences of those loops, and the shape errors.
#include "kernels/activation.h"

#include <cmath>
#include <functional>
#include <string>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

// Shapes of the forward checks: one value, odd sizes, three axes, and one above the threading threshold (16384).
const Shape kShapes[] = {{1, 1}, {3, 7}, {2, 3, 5}, {129, 131}};
// Shapes of the finite-difference checks (each costs numel² evaluations).
const Shape kSmallShapes[] = {{1, 1}, {3, 7}, {2, 3, 5}};

double gelu_reference(double v) { return 0.5 * v * std::erfc(-v / std::sqrt(2.0)); }
double sigmoid_reference(double v) { return 1 / (1 + std::exp(-v)); }
double silu_reference(double v) { return v * sigmoid_reference(v); }

std::vector<double> map_reference(std::vector<double> x, double (*f)(double)) {
  for (double& v : x) v = f(v);
  return x;
}

// y[t, i] = exp(x[t, i]) / Σ_j exp(x[t, j]) over rows of F values, in double (no shift needed for |x| <= 4).
std::vector<double> softmax_reference(const std::vector<double>& x, size_t features) {
  std::vector<double> y(x.size());
  for (size_t start = 0; start < x.size(); start += features) {
    double total = 0;
    for (size_t j = 0; j < features; ++j) total += std::exp(x[start + j]);
    for (size_t j = 0; j < features; ++j) y[start + j] = std::exp(x[start + j]) / total;
  }
  return y;
}

// out[t] = log Σ_j exp(x[t, j]), in double.
std::vector<double> logsumexp_reference(const std::vector<double>& x, size_t features) {
  std::vector<double> out;
  for (size_t start = 0; start < x.size(); start += features) {
    double total = 0;
    for (size_t j = 0; j < features; ++j) total += std::exp(x[start + j]);
    out.push_back(std::log(total));
  }
  return out;
}

TEST_CASE("activation: gelu, silu and sigmoid, by hand") {
  // gelu(x) = x Φ(x): Φ(1) = 0.8413447461, so gelu(1) = 0.8413447, gelu(−1) = −Φ(−1) = −0.1586553.
  // gelu'(x) = Φ(x) + x φ(x), φ(1) = e^(−1/2)/√(2π) = 0.2419707245: gelu'(1) = 1.0833155, gelu'(−1) = −0.0833155.
  const Tensor x = Tensor::from({3}, {0, 1, -1});
  const double rounding = 1e-6;  // float32 erf and exp: a few ulps of values below 1.1
  require_close(gelu_forward(x), {0, 0.8413447461, -0.1586552539}, rounding, 0, "gelu");
  require_close(gelu_backward(Tensor::full({3}, 1), x, gelu_forward(x)), {0.5, 1.0833154706, -0.0833154706}, rounding,
                0, "gelu'");
  // silu(x) = x σ(x): σ(1) = 0.7310585786, silu(1) = 0.7310586, silu(−1) = −σ(−1) = −0.2689414.
  // silu'(x) = σ(x)(1 + x(1 − σ(x))): silu'(0) = 0.5, silu'(1) = 0.7310586 · 1.2689414 = 0.9276705,
  // silu'(−1) = 0.2689414 · (1 − 0.7310586) = 0.0723295.
  require_close(silu_forward(x), {0, 0.7310585786, -0.2689414214}, rounding, 0, "silu");
  require_close(silu_backward(Tensor::full({3}, 1), x), {0.5, 0.9276705, 0.0723295}, rounding, 0, "silu'");
  require_close(sigmoid_forward(x), {0.5, 0.7310585786, 0.2689414214}, rounding, 0, "sigmoid");
  // Far tails saturate to 0 and 1 (and silu to 0 and x) without overflow or NaN.
  const Tensor tails = Tensor::from({2}, {-1000, 1000});
  require_close(sigmoid_forward(tails), {0, 1}, 0, 0, "sigmoid tails");
  require_close(silu_forward(tails), {0, 1000}, 0, 0, "silu tails");
}

TEST_CASE("activation: gelu is correctly rounded, also in the negative tail") {
  // Φ(x) = ½ erfc(−x/√2): written as ½ (1 + erf(x/√2)) in float it would lose every digit to cancellation as x
  // falls (1 + erf is 5.7e-7 at x = −5, where erf's float ulp is 6e-8, and 0 below about −5.9), and even float
  // erfcf is 200 ulps off far out, from the rounding of x/√2. gelu_forward works in double and rounds once.
  std::vector<float> grid;
  for (int i = 0; i <= 24000; ++i) grid.push_back(-16.0f + 0.001f * static_cast<float>(i));  // −16 to 8
  const Tensor x = Tensor::from({static_cast<int64_t>(grid.size())}, grid);
  const std::vector<double> values(grid.begin(), grid.end());
  // Within half an ulp (2⁻²⁴ relative at most) of the double result, one denormal step near −14.8.
  require_close(gelu_forward(x), map_reference(values, gelu_reference), 1.5e-45, 6e-8, "gelu");

  const std::vector<double> tail = {-2, -3.5, -5, -6.5, -8, -10, -12};
  const Tensor x_tail = Tensor::from({static_cast<int64_t>(tail.size())}, std::vector<float>(tail.begin(), tail.end()));
  std::vector<double> gradient;
  for (double v : tail) {
    gradient.push_back(0.5 * std::erfc(-v / std::sqrt(2.0)) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI));
  }
  // Φ = y / x and exp(−x²/2): a few ulps, although Φ + xφ cancels by 1/x² (measured: under 1e-7).
  require_close(gelu_backward(Tensor::full(x_tail.shape(), 1), x_tail, gelu_forward(x_tail)), gradient, 0, 1e-6,
                "gelu' tail");
}

TEST_CASE("activation: softmax and logsumexp, by hand") {
  // softmax([0, ln 3]) = [1, 3]/4 = [0.25, 0.75]; shifting by 1000 changes nothing (the max is subtracted).
  const float ln3 = std::log(3.0f);
  const Tensor x = Tensor::from({2, 2}, {0, ln3, 1000, 1000 + ln3});
  // float32: ln 3 is rounded to 2.4e-8 relative, and 1000 + ln 3 to 3e-5 absolute (ulp at 1000 is 6.1e-5).
  require_close(softmax_forward(x), {0.25, 0.75, 0.25, 0.75}, 1e-5, 0, "softmax");
  // logsumexp: [ln 4, 1000 + ln 4]; the second is rounded to the float ulp at 1000 (6.1e-5).
  require_close(logsumexp_forward(x), {std::log(4.0), 1000 + std::log(4.0)}, 1e-4, 0, "logsumexp");
  // softmax backward at y = [0.25, 0.75], dy = [1, 0]: Σ dy·y = 0.25, dx = [0.25·0.75, 0.75·(0 − 0.25)] = ±0.1875
  require_close(softmax_backward(Tensor::from({2}, {1, 0}), Tensor::from({2}, {0.25f, 0.75f})), {0.1875, -0.1875}, 0, 0,
                "softmax backward");  // exact: quarters
  // A row of −inf has logsumexp −inf, as torch.logsumexp.
  CHECK(logsumexp_forward(Tensor::full({3}, -INFINITY))[0] == -INFINITY);
}

TEST_CASE("activation: forwards match double loops") {
  uint64_t seed = 50;
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, ++seed, 4.0f);
    const std::vector<double> values = to_double(x);
    const size_t features = static_cast<size_t>(shape.back());
    // float32 erf, exp and division: a few ulps of results below 4 in size.
    require_close(gelu_forward(x), map_reference(values, gelu_reference), 1e-6, 1e-6, "gelu");
    require_close(silu_forward(x), map_reference(values, silu_reference), 1e-6, 1e-6, "silu");
    require_close(sigmoid_forward(x), map_reference(values, sigmoid_reference), 1e-7, 1e-6, "sigmoid");
    // float32 exp per value, the row sum in double: a few ulps of probabilities below 1.
    require_close(softmax_forward(x), softmax_reference(values, features), 1e-7, 1e-6, "softmax");
    const Tensor lse = logsumexp_forward(x);
    CHECK(lse.shape() == Shape(shape.begin(), shape.end() - 1));
    // Computed in double, rounded once to float32: half an ulp of values below 10.
    require_close(lse, logsumexp_reference(values, features), 0, 1e-7, "logsumexp");
  }
  // A rank-1 input reduces to a rank-0 result.
  CHECK(logsumexp_forward(Tensor({7})).rank() == 0);
}

TEST_CASE("activation: backwards match finite differences of the double loops") {
  uint64_t seed = 70;
  for (const Shape& shape : kSmallShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, ++seed, 4.0f);
    const Tensor grad_y = random_tensor(shape, ++seed);
    const std::vector<double> values = to_double(x), weights = to_double(grad_y);
    const size_t features = static_cast<size_t>(shape.back());
    using Values = std::vector<double>;
    // d/dx of weighted_sum(reference(x), weights) by central differences.
    const auto numeric = [&](const std::function<Values(const Values&)>& reference) {
      return finite_difference([&](const Values& v) { return weighted_sum(reference(v), weights); }, values);
    };
    const auto gelu = [](const Values& v) { return map_reference(v, gelu_reference); };
    const auto silu = [](const Values& v) { return map_reference(v, silu_reference); };
    const auto softmax = [&](const Values& v) { return softmax_reference(v, features); };
    // float32 derivative formulas (a few ulps of values below 4) against double differences (error ~1e-9).
    const double tolerance = 2e-6;
    require_close(gelu_backward(grad_y, x, gelu_forward(x)), numeric(gelu), tolerance, tolerance, "gelu dL/dx");
    require_close(silu_backward(grad_y, x), numeric(silu), tolerance, tolerance, "silu dL/dx");
    require_close(softmax_backward(grad_y, softmax_forward(x)), numeric(softmax), tolerance, tolerance,
                  "softmax dL/dx");
  }
}

TEST_CASE("activation rejects wrong shapes, naming the argument") {
  const Tensor x({3, 4}), wrong({4, 3}), scalar(Shape{});
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"gelu_backward: grad_y", [&] { gelu_backward(wrong, x, x); }},
      {"gelu_backward: y", [&] { gelu_backward(x, x, wrong); }},
      {"silu_backward: grad_y", [&] { silu_backward(wrong, x); }},
      {"softmax_backward: grad_y", [&] { softmax_backward(wrong, x); }},
      {"softmax_forward: x", [&] { softmax_forward(scalar); }},
      {"logsumexp_forward: x", [&] { logsumexp_forward(scalar); }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
