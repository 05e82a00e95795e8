// RMSNorm and LayerNorm: hand-worked values, double-precision loops on random inputs, backward against central
// finite differences of those loops, and the shape errors.
#include "kernels/norm.h"

#include <cmath>
#include <functional>
#include <string>
#include <utility>

#include "kernels/elementwise.h"
#include "tests/test_util.h"

namespace mr1::test {
namespace {

// Shapes of the forward checks: one feature, one token, odd sizes, three axes, and one above the threading
// threshold (16384 values).
const Shape kShapes[] = {{3, 1}, {1, 4}, {3, 7}, {2, 3, 5}, {129, 131}};
// Shapes of the finite-difference checks (each costs numel² evaluations).
const Shape kSmallShapes[] = {{3, 1}, {1, 4}, {3, 7}, {2, 3, 5}};

// y[t] = x[t] / √(mean x[t]² + eps) · weight, in double.
std::vector<double> rmsnorm_reference(const std::vector<double>& x, const std::vector<double>& weight) {
  const size_t features = weight.size();
  std::vector<double> y(x.size());
  for (size_t start = 0; start < x.size(); start += features) {
    double squares = 0;
    for (size_t j = 0; j < features; ++j) squares += x[start + j] * x[start + j];
    const double r = 1 / std::sqrt(squares / features + kNormEpsilon);
    for (size_t j = 0; j < features; ++j) y[start + j] = x[start + j] * r * weight[j];
  }
  return y;
}

// y[t] = (x[t] − μ) / √(var + eps) · weight + bias, biased variance, in double.
std::vector<double> layernorm_reference(const std::vector<double>& x, const std::vector<double>& weight,
                                        const std::vector<double>& bias) {
  const size_t features = weight.size();
  std::vector<double> y(x.size());
  for (size_t start = 0; start < x.size(); start += features) {
    double mu = 0, variance = 0;
    for (size_t j = 0; j < features; ++j) mu += x[start + j] / features;
    for (size_t j = 0; j < features; ++j) variance += (x[start + j] - mu) * (x[start + j] - mu) / features;
    for (size_t j = 0; j < features; ++j) {
      y[start + j] = (x[start + j] - mu) / std::sqrt(variance + kNormEpsilon) * weight[j] + bias[j];
    }
  }
  return y;
}

// Random inputs for one shape: x uniform in [−2, 2), weight and bias in [−1, 1).
struct NormInputs {
  Tensor x, weight, bias;
  NormInputs(const Shape& shape, uint64_t seed)
      : x(random_tensor(shape, seed, 2.0f)),
        weight(random_tensor({shape.back()}, seed + 1)),
        bias(random_tensor({shape.back()}, seed + 2)) {}
};

TEST_CASE("norm: rmsnorm and layernorm, by hand") {
  // rmsnorm of [3, 4] with weight [1, 2]: mean x² = (9 + 16)/2 = 12.5, r = 1/√(12.5 + 1e-5) = 0.2828425993,
  // y = [3r, 4r·2] = [0.8485277980, 2.2627407947].
  Tensor inv_rms;
  const Tensor rms_y = rmsnorm_forward(Tensor::from({1, 2}, {3, 4}), Tensor::from({2}, {1, 2}), &inv_rms);
  // float32 rounding of values below 3: a few ulps.
  require_close(rms_y, {0.8485277980, 2.2627407947}, 1e-6, 0, "rmsnorm y");
  require_close(inv_rms, {0.2828425993}, 1e-7, 0, "inv_rms");
  // layernorm of [1, 3], weight [1, 1], bias [0, 0.5]: μ = 2, var = 1, s = 1/√(1 + 1e-5) = 0.9999950000,
  // y = [−s, s + 0.5] = [−0.9999950000, 1.4999950000].
  Tensor mean, inv_std;
  const Tensor layer_y = layernorm_forward(Tensor::from({1, 2}, {1, 3}), Tensor::from({2}, {1, 1}),
                                           Tensor::from({2}, {0, 0.5f}), &mean, &inv_std);
  require_close(layer_y, {-0.9999950000, 1.4999950000}, 1e-7, 0, "layernorm y");  // float32 ulp at 1.5 is 1.2e-7
  require_close(mean, {2}, 0, 0, "mean");                                         // exact
  require_close(inv_std, {0.9999950000}, 1e-7, 0, "inv_std");
}

TEST_CASE("norm: forwards match double loops") {
  uint64_t seed = 200;
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const NormInputs in(shape, seed += 10);
    const std::vector<double> x = to_double(in.x), weight = to_double(in.weight), bias = to_double(in.bias);
    // Reductions in double, then a few float32 operations on values below √D·|w| <= 12: a few ulps.
    Tensor inv_rms;
    require_close(rmsnorm_forward(in.x, in.weight, &inv_rms), rmsnorm_reference(x, weight), 1e-6, 1e-6, "rmsnorm");
    CHECK(inv_rms.shape() == Shape{in.x.numel() / shape.back()});
    Tensor mean, inv_std;
    require_close(layernorm_forward(in.x, in.weight, in.bias, &mean, &inv_std), layernorm_reference(x, weight, bias),
                  1e-6, 1e-6, "layernorm");
    CHECK(mean.shape() == inv_rms.shape());
    CHECK(inv_std.shape() == inv_rms.shape());
    // The saved statistics are optional.
    CHECK(rmsnorm_forward(in.x, in.weight, nullptr).shape() == shape);
    CHECK(layernorm_forward(in.x, in.weight, in.bias, nullptr, nullptr).shape() == shape);
  }
}

TEST_CASE("norm: backwards match finite differences of the double loops") {
  uint64_t seed = 300;
  for (const Shape& shape : kSmallShapes) {
    INFO("shape " << shape_string(shape));
    const NormInputs in(shape, seed += 10);
    const Tensor grad_y = random_tensor(shape, seed + 5);
    const std::vector<double> x = to_double(in.x), weight = to_double(in.weight), bias = to_double(in.bias);
    const std::vector<double> weights = to_double(grad_y);
    // Computed in double from float32 saved statistics (6e-8 relative) and rounded once to float32 (6e-8 relative),
    // against double differences (error ~1e-9): observed 1.1e-7 on values up to 4.
    const double tolerance = 1e-6;

    Tensor inv_rms;
    rmsnorm_forward(in.x, in.weight, &inv_rms);
    const RmsNormGrads rms = rmsnorm_backward(grad_y, in.x, in.weight, inv_rms);
    using Values = std::vector<double>;
    const auto rms_loss_of_x = [&](const Values& v) { return weighted_sum(rmsnorm_reference(v, weight), weights); };
    const auto rms_loss_of_weight = [&](const Values& v) { return weighted_sum(rmsnorm_reference(x, v), weights); };
    require_close(rms.input, finite_difference(rms_loss_of_x, x), tolerance, tolerance, "rmsnorm dL/dx");
    require_close(rms.weight, finite_difference(rms_loss_of_weight, weight), tolerance, tolerance,
                  "rmsnorm dL/dweight");

    Tensor mean, inv_std;
    layernorm_forward(in.x, in.weight, in.bias, &mean, &inv_std);
    const LayerNormGrads layer = layernorm_backward(grad_y, in.x, in.weight, mean, inv_std);
    const auto loss_of_x = [&](const Values& v) { return weighted_sum(layernorm_reference(v, weight, bias), weights); };
    const auto loss_of_weight = [&](const Values& v) { return weighted_sum(layernorm_reference(x, v, bias), weights); };
    const auto loss_of_bias = [&](const Values& v) { return weighted_sum(layernorm_reference(x, weight, v), weights); };
    require_close(layer.input, finite_difference(loss_of_x, x), tolerance, tolerance, "layernorm dL/dx");
    require_close(layer.weight, finite_difference(loss_of_weight, weight), tolerance, tolerance,
                  "layernorm dL/dweight");
    require_close(layer.bias, finite_difference(loss_of_bias, bias), tolerance, tolerance, "layernorm dL/dbias");

    // The accumulating forms add exactly those gradients to what the gradients hold.
    const Tensor held_weight = random_tensor(in.weight.shape(), seed + 6);
    const Tensor held_bias = random_tensor({shape.back()}, seed + 7), held_x = random_tensor(shape, seed + 8);
    Tensor rms_weight = held_weight.clone(), rms_x = held_x.clone();
    rmsnorm_backward_accumulate(grad_y, in.x, in.weight, inv_rms, rms_weight, rms_x);
    require_close(rms_x, to_double(add(held_x, rms.input)), 0, 0, "rmsnorm accumulate dL/dx");
    require_close(rms_weight, to_double(add(held_weight, rms.weight)), 0, 0, "rmsnorm accumulate dL/dweight");
    Tensor ln_weight = held_weight.clone(), ln_bias = held_bias.clone(), ln_x = held_x.clone();
    layernorm_backward_accumulate(grad_y, in.x, in.weight, mean, inv_std, ln_weight, ln_bias, ln_x);
    require_close(ln_x, to_double(add(held_x, layer.input)), 0, 0, "layernorm accumulate dL/dx");
    require_close(ln_weight, to_double(add(held_weight, layer.weight)), 0, 0, "layernorm accumulate dL/dweight");
    require_close(ln_bias, to_double(add(held_bias, layer.bias)), 0, 0, "layernorm accumulate dL/dbias");
  }
}

TEST_CASE("norm: rmsnorm with the residual add fused in gives add's sum and its norm, exactly") {
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, 21), delta = random_tensor(shape, 22);
    const Tensor weight = random_tensor({shape.back()}, 23);
    Tensor sum, inv_rms, expected_inv_rms;
    const Tensor y = rmsnorm_forward_after_add(x, delta, weight, sum, &inv_rms);
    const Tensor expected_sum = add(x, delta);
    require_close(sum, to_double(expected_sum), 0, 0, "sum");
    require_close(y, to_double(rmsnorm_forward(expected_sum, weight, &expected_inv_rms)), 0, 0, "y");
    require_close(inv_rms, to_double(expected_inv_rms), 0, 0, "inv_rms");
  }
  Tensor sum;
  CHECK_THROWS_WITH(rmsnorm_forward_after_add(Tensor({3, 4}), Tensor({3, 5}), Tensor({4}), sum, nullptr),
                    Catch::Contains("rmsnorm_forward: delta"));
}

TEST_CASE("norm: layernorm with the residual add fused in gives add's sum and its norm, exactly") {
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, 24), delta = random_tensor(shape, 25);
    const Tensor weight = random_tensor({shape.back()}, 26), bias = random_tensor({shape.back()}, 27);
    Tensor sum, mean, inv_std, expected_mean, expected_inv_std;
    const Tensor y = layernorm_forward_after_add(x, delta, weight, bias, sum, &mean, &inv_std);
    const Tensor expected_sum = add(x, delta);
    require_close(sum, to_double(expected_sum), 0, 0, "sum");
    require_close(y, to_double(layernorm_forward(expected_sum, weight, bias, &expected_mean, &expected_inv_std)), 0,
                  0, "y");
    require_close(mean, to_double(expected_mean), 0, 0, "mean");
    require_close(inv_std, to_double(expected_inv_std), 0, 0, "inv_std");
  }
  Tensor sum;
  CHECK_THROWS_WITH(
      layernorm_forward_after_add(Tensor({3, 4}), Tensor({3, 5}), Tensor({4}), Tensor({4}), sum, nullptr, nullptr),
      Catch::Contains("layernorm_forward: delta"));
}

TEST_CASE("norm rejects wrong shapes, naming the argument") {
  const Tensor x({3, 4}), weight({4}), bias({4}), rows({3});
  const Tensor wrong_x({3, 5}), square_weight({4, 4}), wrong_bias({5}), wrong_rows({4}), wrong_grad({4, 4});
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"rmsnorm_forward: x", [&] { rmsnorm_forward(wrong_x, weight, nullptr); }},
      {"rmsnorm_forward: weight", [&] { rmsnorm_forward(x, square_weight, nullptr); }},
      {"rmsnorm_backward: grad_y", [&] { rmsnorm_backward(wrong_grad, x, weight, rows); }},
      {"rmsnorm_backward: inv_rms", [&] { rmsnorm_backward(x, x, weight, wrong_rows); }},
      {"layernorm_forward: bias", [&] { layernorm_forward(x, weight, wrong_bias, nullptr, nullptr); }},
      {"layernorm_backward: mean", [&] { layernorm_backward(x, x, weight, wrong_rows, rows); }},
      {"layernorm_backward: inv_std", [&] { layernorm_backward(x, x, weight, rows, wrong_rows); }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
