// The grouped linear layer (the MoE experts' GEMMs): a hand-worked case, forward against a double loop
// per group, backward against finite differences (added onto gradients already present), and the
// errors for offsets and shapes that do not fit.
#include "kernels/grouped_linear.h"

#include <functional>
#include <string>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

// y[r, o] = Σ_i x[r, i] · W_g[o, i] + b_g[o] for the group g holding row r.
// x (R, I) row-major; weights[g] (O, I); biases[g] (O).
std::vector<double> grouped_reference(const std::vector<double>& x, const std::vector<std::vector<double>>& weights,
                                      const std::vector<std::vector<double>>& biases,
                                      const std::vector<int64_t>& offsets, size_t inputs) {
  const size_t outputs = weights[0].size() / inputs;
  std::vector<double> y(offsets.back() * outputs);
  for (size_t g = 0; g < weights.size(); ++g) {
    for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      for (size_t o = 0; o < outputs; ++o) {
        double total = biases[g][o];
        for (size_t i = 0; i < inputs; ++i) total += x[r * inputs + i] * weights[g][o * inputs + i];
        y[r * outputs + o] = total;
      }
    }
  }
  return y;
}

template <typename TensorPointer>
std::vector<TensorPointer> pointers(std::vector<Tensor>& tensors) {
  std::vector<TensorPointer> result;
  for (Tensor& tensor : tensors) result.push_back(&tensor);
  return result;
}

// Four groups of 3, 0, 1 and 4 rows: an empty group and a single row among them.
struct GroupedInputs {
  static constexpr int64_t I = 5, O = 3;
  std::vector<int64_t> offsets{0, 3, 3, 4, 8};
  Tensor x = random_tensor({8, I}, 1);
  std::vector<Tensor> weights, biases;
  GroupedInputs() {
    for (uint64_t g = 0; g < 4; ++g) {
      weights.push_back(random_tensor({O, I}, 10 + g));
      biases.push_back(random_tensor({O}, 20 + g));
    }
  }
  std::vector<std::vector<double>> weight_values() const {
    std::vector<std::vector<double>> values;
    for (const Tensor& w : weights) values.push_back(to_double(w));
    return values;
  }
  std::vector<std::vector<double>> bias_values() const {
    std::vector<std::vector<double>> values;
    for (const Tensor& b : biases) values.push_back(to_double(b));
    return values;
  }
};

TEST_CASE("grouped_linear_forward: a hand-worked case with an empty group") {
  // Group 0: rows 0-1 through W0 = [[1, 2]], b0 = [0.5]; group 1: no rows; group 2: row 2 through
  // W2 = [[-1, 3]], b2 = [0].
  const Tensor x = Tensor::from({3, 2}, {1, 1, 2, -1, 0.5f, 2});
  const Tensor w0 = Tensor::from({1, 2}, {1, 2}), w1 = Tensor::from({1, 2}, {7, 7}), w2 = Tensor::from({1, 2}, {-1, 3});
  const Tensor b0 = Tensor::from({1}, {0.5f}), b1 = Tensor::from({1}, {9}), b2 = Tensor::from({1}, {0});
  const Tensor y = grouped_linear_forward(x, {0, 2, 2, 3}, {&w0, &w1, &w2}, {&b0, &b1, &b2});
  // 1 + 2 + 0.5 = 3.5;  2 − 2 + 0.5 = 0.5;  −0.5 + 6 = 5.5
  CHECK(y.to_vector() == std::vector<float>{3.5f, 0.5f, 5.5f});
  const Tensor no_bias = grouped_linear_forward(x, {0, 2, 2, 3}, {&w0, &w1, &w2}, {});
  CHECK(no_bias.to_vector() == std::vector<float>{3.0f, 0.0f, 5.5f});
}

TEST_CASE("grouped_linear_forward matches a double loop over the groups") {
  GroupedInputs in;
  const Tensor y = grouped_linear_forward(in.x, in.offsets, pointers<const Tensor*>(in.weights),
                                          pointers<const Tensor*>(in.biases));
  CHECK(y.shape() == Shape{8, 3});
  // float32 sums of I = 5 products of values below 1 (ulp of partial sums ~5e-7).
  require_close(y, grouped_reference(to_double(in.x), in.weight_values(), in.bias_values(), in.offsets, 5), 2e-6, 0,
                "y");
}

TEST_CASE("grouped_linear_backward adds finite-difference gradients onto the parameters' gradients") {
  GroupedInputs in;
  const Tensor grad_y = random_tensor({8, 3}, 30);
  const std::vector<double> loss_weights = to_double(grad_y), x = to_double(in.x);
  const auto weights = in.weight_values(), biases = in.bias_values();
  // Gradients already holding a value (from an earlier micro-batch): the op adds to them.
  std::vector<Tensor> grad_weights, grad_biases;
  for (uint64_t g = 0; g < 4; ++g) {
    grad_weights.push_back(random_tensor({3, 5}, 40 + g));
    grad_biases.push_back(random_tensor({3}, 50 + g));
  }
  std::vector<std::vector<double>> initial_w, initial_b;
  for (uint64_t g = 0; g < 4; ++g) {
    initial_w.push_back(to_double(grad_weights[g]));
    initial_b.push_back(to_double(grad_biases[g]));
  }
  const Tensor grad_x = grouped_linear_backward(grad_y, in.x, in.offsets, pointers<const Tensor*>(in.weights),
                                                pointers<Tensor*>(grad_weights), pointers<Tensor*>(grad_biases));

  using Values = std::vector<double>;
  // float32 sums of at most 4 rows or 3 outputs of products below 1 against double differences: 1e-6.
  const double tolerance = 1e-6;
  require_close(grad_x,
                finite_difference([&](const Values& v) {
                  return weighted_sum(grouped_reference(v, weights, biases, in.offsets, 5), loss_weights);
                }, x),
                tolerance, 0, "dL/dx");
  for (size_t g = 0; g < 4; ++g) {
    auto with_weight = [&](const Values& v) {
      auto changed = weights;
      changed[g] = v;
      return weighted_sum(grouped_reference(x, changed, biases, in.offsets, 5), loss_weights);
    };
    auto with_bias = [&](const Values& v) {
      auto changed = biases;
      changed[g] = v;
      return weighted_sum(grouped_reference(x, weights, changed, in.offsets, 5), loss_weights);
    };
    Values expected_w = finite_difference(with_weight, weights[g]), expected_b = finite_difference(with_bias, biases[g]);
    for (size_t i = 0; i < expected_w.size(); ++i) expected_w[i] += initial_w[g][i];
    for (size_t i = 0; i < expected_b.size(); ++i) expected_b[i] += initial_b[g][i];
    require_close(grad_weights[g], expected_w, tolerance, 0, "dL/dW of group " + std::to_string(g));
    require_close(grad_biases[g], expected_b, tolerance, 0, "dL/db of group " + std::to_string(g));
  }
  // The empty group's gradients are untouched.
  const std::vector<float> empty_group = grad_weights[1].to_vector();
  CHECK(std::vector<double>(empty_group.begin(), empty_group.end()) == initial_w[1]);
}

TEST_CASE("grouped_linear_backward skips dL/dx and the biases when asked") {
  GroupedInputs in;
  std::vector<Tensor> grad_weights;
  for (int g = 0; g < 4; ++g) grad_weights.emplace_back(Shape{3, 5});
  const Tensor grad_x = grouped_linear_backward(random_tensor({8, 3}, 2), in.x, in.offsets,
                                                pointers<const Tensor*>(in.weights), pointers<Tensor*>(grad_weights),
                                                {}, false);
  CHECK_FALSE(grad_x.defined());
  CHECK(grad_weights[0].to_vector() != std::vector<float>(15, 0.0f));
}

TEST_CASE("grouped_linear rejects offsets and shapes that do not fit, naming them") {
  GroupedInputs in;
  const auto weights = pointers<const Tensor*>(in.weights), biases = pointers<const Tensor*>(in.biases);
  const Tensor wrong_weight({3, 4}), wrong_bias({2}), wrong_x({8, 4}), wrong_grad_y({8, 2});
  std::vector<Tensor> grads;
  for (int g = 0; g < 4; ++g) grads.emplace_back(Shape{3, 5});
  const auto grad_weights = pointers<Tensor*>(grads);
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"offsets: expected G + 1 = 5", [&] { grouped_linear_forward(in.x, {0, 3, 8}, weights, biases); }},
      {"offsets: expected to run from 0 to the R = 8", [&] { grouped_linear_forward(in.x, {0, 3, 3, 4, 7}, weights, biases); }},
      {"offsets: expected non-decreasing", [&] { grouped_linear_forward(in.x, {0, 4, 3, 4, 8}, weights, biases); }},
      {"weight of group 2", [&] {
         auto changed = weights;
         changed[2] = &wrong_weight;
         grouped_linear_forward(in.x, in.offsets, changed, biases);
       }},
      {"bias of group 3", [&] {
         auto changed = biases;
         changed[3] = &wrong_bias;
         grouped_linear_forward(in.x, in.offsets, weights, changed);
       }},
      {"biases: expected one per group", [&] { grouped_linear_forward(in.x, in.offsets, weights, {biases[0]}); }},
      {"grouped_linear_forward: weight of group 0", [&] { grouped_linear_forward(wrong_x, in.offsets, weights, biases); }},
      {"grouped_linear_backward: grad_y", [&] {
         grouped_linear_backward(wrong_grad_y, in.x, in.offsets, weights, grad_weights, {});
       }},
      {"grad_weights: expected one per group", [&] {
         grouped_linear_backward(random_tensor({8, 3}, 1), in.x, in.offsets, weights, {grad_weights[0]}, {});
       }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
