// Linear layer: forward against a hand-worked case and a double-precision loop, backward against central
// finite differences of that loop, and the shape errors.
#include "kernels/linear.h"

#include <functional>
#include <string>
#include <tuple>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

// y[t, o] = Σ_i x[t, i] · weight[o, i] + bias[o]     x (T, I), weight (O, I), bias (O) or empty
std::vector<double> linear_reference(const std::vector<double>& x, const std::vector<double>& weight,
                                     const std::vector<double>& bias, size_t inputs) {
  const size_t outputs = weight.size() / inputs;
  const size_t tokens = x.size() / inputs;
  std::vector<double> y(tokens * outputs);
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t o = 0; o < outputs; ++o) {
      double total = bias.empty() ? 0.0 : bias[o];
      for (size_t i = 0; i < inputs; ++i) total += x[t * inputs + i] * weight[o * inputs + i];
      y[t * outputs + o] = total;
    }
  }
  return y;
}

struct LinearConfig {
  const char* name;
  Shape x_shape;  // (..., I)
  int64_t outputs;
  bool has_bias;
  Shape y_shape() const {  // (..., O)
    Shape shape = x_shape;
    shape.back() = outputs;
    return shape;
  }
};

const LinearConfig kConfigs[] = {
    {"one token", {1, 4}, 3, true},
    {"odd sizes", {5, 7}, 3, true},
    {"batch and length axes, no bias", {2, 3, 5}, 4, false},
    {"one feature in and out", {3, 1}, 1, true},
    {"no tokens", {0, 3}, 2, true},
};

// Random inputs of one configuration, uniform in [−1, 1).
struct LinearInputs {
  Tensor x, weight, bias;
  LinearInputs(const LinearConfig& config, uint64_t seed)
      : x(random_tensor(config.x_shape, seed)),
        weight(random_tensor({config.outputs, config.x_shape.back()}, seed + 1)),
        bias(config.has_bias ? random_tensor({config.outputs}, seed + 2) : Tensor()) {}
  std::vector<double> bias_values() const { return bias.defined() ? to_double(bias) : std::vector<double>(); }
  size_t inputs() const { return static_cast<size_t>(x.size(-1)); }
};

TEST_CASE("linear_forward: a hand-worked case") {
  // x = [1, 2], W = [[1, 0], [2, −1], [0.5, 3]], b = [0.5, 0, −1]
  // y = [1·1 + 2·0 + 0.5, 1·2 + 2·(−1) + 0, 1·0.5 + 2·3 − 1] = [1.5, 0, 5.5]
  const Tensor x = Tensor::from({1, 2}, {1, 2});
  const Tensor weight = Tensor::from({3, 2}, {1, 0, 2, -1, 0.5f, 3});
  const Tensor bias = Tensor::from({3}, {0.5f, 0, -1});
  // Exact: every product and sum is a small dyadic number.
  require_close(linear_forward(x, weight, &bias), {1.5, 0, 5.5}, 0, 0, "y");
  require_close(linear_forward(x, weight, nullptr), {1, 0, 6.5}, 0, 0, "y without bias");
}

TEST_CASE("linear_backward: a hand-worked case") {
  // dy = [1, 1, 1], x = [1, 2], W as above:
  // dx = dy·W = [1 + 2 + 0.5, 0 − 1 + 3] = [3.5, 2];  dW = dyᵀ·x = [[1, 2], [1, 2], [1, 2]];  db = [1, 1, 1]
  const Tensor x = Tensor::from({1, 2}, {1, 2});
  const Tensor weight = Tensor::from({3, 2}, {1, 0, 2, -1, 0.5f, 3});
  const LinearGrads grads = linear_backward(Tensor::full({1, 3}, 1), x, weight, true);
  // Exact: small dyadic numbers.
  require_close(grads.input, {3.5, 2}, 0, 0, "dL/dx");
  require_close(grads.weight, {1, 2, 1, 2, 1, 2}, 0, 0, "dL/dW");
  require_close(grads.bias, {1, 1, 1}, 0, 0, "dL/db");
}

TEST_CASE("linear_forward matches a double-precision loop") {
  uint64_t seed = 10;
  for (const LinearConfig& config : kConfigs) {
    const LinearInputs in(config, seed += 10);
    const Tensor y = linear_forward(in.x, in.weight, &in.bias);  // an undefined bias reads as none
    CHECK(y.shape() == config.y_shape());
    // float32 rounding of I + 1 <= 8 terms of size <= 1, partial sums below 8 (ulp 4.8e-7): observed 1.2e-7.
    require_close(y, linear_reference(to_double(in.x), to_double(in.weight), in.bias_values(), in.inputs()), 1e-6, 0,
                  config.name);
  }
  // Large enough for Eigen's blocked, threaded GEMM.
  const LinearInputs in({"large", {67, 300}, 129, true}, 7);
  // float32 rounding of I = 300 terms, partial sums up to ~20 (ulp 1.9e-6), errors adding up like a random walk
  // over the blocked sums: observed 1.3e-5; the bound leaves room for other SIMD widths and block orders.
  require_close(linear_forward(in.x, in.weight, &in.bias),
                linear_reference(to_double(in.x), to_double(in.weight), in.bias_values(), in.inputs()), 5e-5, 0,
                "large");
  // Few rows and a large weight: the output features are split across threads (decoding's path).
  const LinearInputs few({"few rows", {3, 300}, 517, true}, 9);
  // The same sums as "large" (I = 300 terms): the same bound.
  require_close(linear_forward(few.x, few.weight, &few.bias),
                linear_reference(to_double(few.x), to_double(few.weight), few.bias_values(), few.inputs()), 5e-5, 0,
                "few rows");
}

TEST_CASE("linear_backward matches finite differences of the double loop") {
  uint64_t seed = 100;
  for (const LinearConfig& config : kConfigs) {
    const LinearInputs in(config, seed += 10);
    const Tensor grad_y = random_tensor(config.y_shape(), seed + 5);
    const std::vector<double> weights = to_double(grad_y);
    const std::vector<double> x = to_double(in.x), weight = to_double(in.weight), bias = in.bias_values();
    const size_t inputs = in.inputs();
    const LinearGrads grads = linear_backward(grad_y, in.x, in.weight, config.has_bias);

    const std::string name = config.name;
    // float32 sums of at most T = 6 or O = 4 products of size <= 1 (partial sums below 6, ulp 4.8e-7) against
    // double differences (error ~1e-9): observed 1.8e-7.
    const double tolerance = 1e-6;
    using Values = std::vector<double>;
    const auto loss_of_x = [&](const Values& v) {
      return weighted_sum(linear_reference(v, weight, bias, inputs), weights);
    };
    const auto loss_of_weight = [&](const Values& v) {
      return weighted_sum(linear_reference(x, v, bias, inputs), weights);
    };
    const auto loss_of_bias = [&](const Values& v) {
      return weighted_sum(linear_reference(x, weight, v, inputs), weights);
    };
    require_close(grads.input, finite_difference(loss_of_x, x), tolerance, 0, name + ": dL/dx");
    require_close(grads.weight, finite_difference(loss_of_weight, weight), tolerance, 0, name + ": dL/dW");
    if (config.has_bias) {
      require_close(grads.bias, finite_difference(loss_of_bias, bias), tolerance, 0, name + ": dL/db");
    } else {
      CHECK_FALSE(grads.bias.defined());
    }
  }
}

TEST_CASE("linear_backward skips dL/dx when it is not needed") {
  const LinearInputs in(kConfigs[1], 5);
  const LinearGrads grads = linear_backward(random_tensor({5, 3}, 6), in.x, in.weight, true, false);
  CHECK_FALSE(grads.input.defined());
  CHECK(grads.weight.shape() == in.weight.shape());
  CHECK(grads.bias.shape() == Shape{3});
}

TEST_CASE("linear_backward_accumulate adds dL/dW and dL/db onto gradients already there") {
  const LinearInputs in(kConfigs[1], 7);
  const Tensor grad_y = random_tensor({5, 3}, 8);
  const LinearGrads fresh = linear_backward(grad_y, in.x, in.weight, true);
  Tensor grad_weight = random_tensor({3, 7}, 9), grad_bias = random_tensor({3}, 10);
  const std::vector<double> weight_before = to_double(grad_weight), bias_before = to_double(grad_bias);
  const Tensor grad_x = linear_backward_accumulate(grad_y, in.x, in.weight, grad_weight, &grad_bias);
  std::vector<double> expected_weight = to_double(fresh.weight), expected_bias = to_double(fresh.bias);
  for (size_t i = 0; i < expected_weight.size(); ++i) expected_weight[i] += weight_before[i];
  for (size_t i = 0; i < expected_bias.size(); ++i) expected_bias[i] += bias_before[i];
  // One float32 addition apart from the fresh gradient plus the old value.
  require_close(grad_weight, expected_weight, 1e-6, 1e-6, "dL/dW added");
  require_close(grad_bias, expected_bias, 1e-6, 1e-6, "dL/db added");
  require_close(grad_x, fresh.input, 0, 0, "dL/dx");
  CHECK_FALSE(linear_backward_accumulate(grad_y, in.x, in.weight, grad_weight, nullptr, false).defined());
  Tensor wrong_grad({2, 7});
  CHECK_THROWS_WITH(linear_backward_accumulate(grad_y, in.x, in.weight, wrong_grad, nullptr),
                    Catch::Contains("linear_backward: grad_weight"));
}

TEST_CASE("linear_backward_add adds dL/dx onto a gradient of x already there") {
  // A larger case too: Eigen's GEMM then adds its partial sums into grad_x block by block.
  for (const auto& [T, I, O] : {std::tuple<int64_t, int64_t, int64_t>{5, 7, 3}, {300, 96, 400}}) {
    INFO("T " << T << " I " << I << " O " << O);
    const Tensor x = random_tensor({T, I}, 11), weight = random_tensor({O, I}, 12), grad_y = random_tensor({T, O}, 13);
    const LinearGrads fresh = linear_backward(grad_y, x, weight, true);
    const Tensor grad_x_before = random_tensor({T, I}, 14);
    Tensor grad_x = grad_x_before.clone(), grad_weight = random_tensor({O, I}, 15), grad_bias = random_tensor({O}, 16);
    Tensor weight_via_accumulate = grad_weight.clone(), bias_via_accumulate = grad_bias.clone();
    linear_backward_add(grad_y, x, weight, grad_weight, &grad_bias, grad_x);
    std::vector<double> expected_x = to_double(fresh.input);
    const std::vector<double> before = to_double(grad_x_before);
    for (size_t i = 0; i < expected_x.size(); ++i) expected_x[i] += before[i];
    // The GEMM's rounding as it accumulates, against one float32 addition after it.
    require_close(grad_x, expected_x, 1e-5, 1e-6, "dL/dx added");
    // dL/dW and dL/db: exactly as linear_backward_accumulate adds them.
    linear_backward_accumulate(grad_y, x, weight, weight_via_accumulate, &bias_via_accumulate, false);
    require_close(grad_weight, to_double(weight_via_accumulate), 0, 0, "dL/dW added");
    require_close(grad_bias, to_double(bias_via_accumulate), 0, 0, "dL/db added");
    Tensor wrong_grad_x({T, I + 1});
    CHECK_THROWS_WITH(linear_backward_add(grad_y, x, weight, grad_weight, nullptr, wrong_grad_x),
                      Catch::Contains("linear_backward: grad_x"));
  }
}

TEST_CASE("linear rejects wrong shapes, naming the argument") {
  const Tensor x({5, 7}), weight({3, 7}), bias({3}), grad_y({5, 3});
  const Tensor wrong_bias({4}), wrong_x({5, 6}), flat_weight({21}), wrong_grad_y({5, 4});
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"linear_forward: x", [&] { linear_forward(wrong_x, weight, &bias); }},
      {"linear_forward: weight", [&] { linear_forward(x, flat_weight, &bias); }},
      {"linear_forward: bias", [&] { linear_forward(x, weight, &wrong_bias); }},
      {"linear_backward: x", [&] { linear_backward(grad_y, wrong_x, weight, true); }},
      {"linear_backward: grad_y", [&] { linear_backward(wrong_grad_y, x, weight, true); }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
