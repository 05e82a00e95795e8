// The causal depthwise conv1d: a hand-worked case, agreement with a double-precision loop,
// gradients against finite differences, and the shape errors.
#include "kernels/conv1d.h"

#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "tests/test_util.h"

namespace {

using namespace mr1;
using namespace mr1::test;

struct ConvCase {
  int64_t batch, length, channels, width;  // B, L, E, K
  bool stored_layout;                      // weight (E, 1, K) as stored, else (E, K)
};

std::string describe(const ConvCase& c) {
  return "B=" + std::to_string(c.batch) + " L=" + std::to_string(c.length) + " E=" + std::to_string(c.channels) +
         " K=" + std::to_string(c.width) + (c.stored_layout ? " weight (E, 1, K)" : " weight (E, K)");
}

struct ConvTensors {
  Tensor x, weight, bias;
};

ConvTensors make_conv_tensors(const ConvCase& c, uint64_t seed) {
  const Shape weight_shape =
      c.stored_layout ? Shape{c.channels, 1, c.width} : Shape{c.channels, c.width};
  return {random_tensor({c.batch, c.length, c.channels}, seed), random_tensor(weight_shape, seed + 1),
          random_tensor({c.channels}, seed + 2)};
}

// y[b, t, e] = bias[e] + Σ_k w[e, k] · x[b, t − K + 1 + k, e], written as the definition, in double.
std::vector<double> reference_conv(const ConvCase& c, const std::vector<double>& x, const std::vector<double>& w,
                                   const std::vector<double>& bias) {
  const int64_t L = c.length, E = c.channels, K = c.width;
  std::vector<double> y(c.batch * L * E);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t e = 0; e < E; ++e) {
        double total = bias[e];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t source = t - K + 1 + k;
          if (source >= 0) total += w[e * K + k] * x[(b * L + source) * E + e];
        }
        y[(b * L + t) * E + e] = total;
      }
    }
  }
  return y;
}

}  // namespace

TEST_CASE("causal_conv1d: a hand-worked case") {
  // K = 2, weight (2, 3), bias 1, x = (1, 2, 4):
  //   y0 = 1 + 3·1         = 4      (x[−1] = 0)
  //   y1 = 1 + 2·1 + 3·2   = 9
  //   y2 = 1 + 2·2 + 3·4   = 17
  const Tensor x = Tensor::from({1, 3, 1}, {1, 2, 4});
  const Tensor bias = Tensor::from({1}, {1});
  for (const Shape& weight_shape : {Shape{1, 1, 2}, Shape{1, 2}}) {
    INFO("weight " << shape_string(weight_shape));
    const Tensor y = causal_conv1d_forward(x, Tensor::from(weight_shape, {2, 3}), bias);
    require_close(y, std::vector<double>{4, 9, 17}, 0, 0, "y");  // small integers: exact in float
  }
}

TEST_CASE("causal_conv1d_forward matches a double-precision loop") {
  const ConvCase cases[] = {
      {2, 9, 5, 1, true},    {2, 9, 5, 2, false},  {1, 7, 70, 3, true},  // 70 channels: a partial second block
      {3, 6, 4, 4, true},    {1, 1, 3, 4, false},                         // L = 1 < K
      {1, 2, 130, 4, false}, {2, 20, 8, 8, true},  {1, 20, 5, 12, true},  {1, 5, 3, 12, false},
  };
  for (const ConvCase& c : cases) {
    INFO(describe(c));
    const ConvTensors in = make_conv_tensors(c, 11);
    const Tensor y = causal_conv1d_forward(in.x, in.weight, in.bias);
    CHECK(y.shape() == Shape{c.batch, c.length, c.channels});
    // At most K + 1 = 9 float terms of size ≤ 1: ≤ 9 roundings of ≤ 2⁻²⁴·9 each, under 5e-6
    // (observed ≤ 3.2e-7).
    require_close(y, reference_conv(c, to_double(in.x), to_double(in.weight), to_double(in.bias)), 5e-6, 0, "y");
  }
}

TEST_CASE("causal_conv1d_backward matches finite differences of the double loop") {
  const ConvCase cases[] = {
      {2, 5, 3, 1, true}, {2, 5, 3, 2, false}, {1, 6, 2, 3, true}, {2, 5, 3, 4, false}, {1, 2, 3, 4, true},
      {1, 14, 2, 12, true},
  };
  for (const ConvCase& c : cases) {
    INFO(describe(c));
    const ConvTensors in = make_conv_tensors(c, 23);
    const Tensor grad_y = random_tensor({c.batch, c.length, c.channels}, 29);
    const std::vector<double> weights = to_double(grad_y);
    std::vector<double> x = to_double(in.x), w = to_double(in.weight), bias = to_double(in.bias);
    // The loss Σ grad_y ⊙ y, as a function of one input at a time.
    auto loss_of = [&](std::vector<double>* input) {
      return [&, input](const std::vector<double>& values) {
        const std::vector<double> saved = *input;
        *input = values;
        const double loss = weighted_sum(reference_conv(c, x, w, bias), weights);
        *input = saved;
        return loss;
      };
    };
    const CausalConv1dGrads grads = causal_conv1d_backward(grad_y, in.x, in.weight);
    CHECK(grads.weight.shape() == in.weight.shape());
    // The loss is linear in each input, so central differences are exact but for double rounding
    // (~1e-10); the float gradients are sums of at most B·L = 10 products of size ≤ 1, each
    // rounded to 2⁻²⁴ of the running sum: under 5e-6 (observed ≤ 2e-7).
    require_close(grads.input, finite_difference(loss_of(&x), x), 5e-6, 0, "dx");
    require_close(grads.weight, finite_difference(loss_of(&w), w), 5e-6, 0, "dweight");
    require_close(grads.bias, finite_difference(loss_of(&bias), bias), 5e-6, 0, "dbias");

    // The accumulating form adds exactly those gradients to what the parameters' gradients hold.
    const Tensor held_weight = random_tensor(in.weight.shape(), 31), held_bias = random_tensor({c.channels}, 37);
    Tensor weight_grad = held_weight.clone(), bias_grad = held_bias.clone();
    require_close(causal_conv1d_backward_accumulate(grad_y, in.x, in.weight, weight_grad, bias_grad),
                  to_double(grads.input), 0, 0, "accumulate dx");
    require_close(weight_grad, to_double(add(held_weight, grads.weight)), 0, 0, "accumulate dweight");
    require_close(bias_grad, to_double(add(held_bias, grads.bias)), 0, 0, "accumulate dbias");
  }
}

TEST_CASE("causal_conv1d names the argument and both shapes on a mismatch") {
  const Tensor x({2, 5, 3});
  const Tensor weight({3, 1, 4});
  const Tensor bias({3});
  REQUIRE_THROWS_WITH(causal_conv1d_forward(Tensor({2, 5}), weight, bias),
                      "causal_conv1d: x: expected shape (*, *, *), found (2, 5)");
  REQUIRE_THROWS_WITH(causal_conv1d_forward(x, Tensor({3, 2, 4}), bias),
                      "causal_conv1d: weight: expected shape (3, 1, *), found (3, 2, 4)");
  REQUIRE_THROWS_WITH(causal_conv1d_forward(x, Tensor({4, 4}), bias),
                      "causal_conv1d: weight: expected shape (3, *), found (4, 4)");
  REQUIRE_THROWS_WITH(causal_conv1d_forward(x, Tensor({12}), bias),
                      "causal_conv1d: weight: expected shape (3, 1, K) or (3, K), found (12)");
  REQUIRE_THROWS_WITH(causal_conv1d_forward(x, Tensor({3, 1, 0}), bias),
                      "causal_conv1d: weight: kernel width K must be at least 1, found (3, 1, 0)");
  REQUIRE_THROWS_WITH(causal_conv1d_forward(x, weight, Tensor({4})),
                      "causal_conv1d: bias: expected shape (3), found (4)");
  REQUIRE_THROWS_WITH(causal_conv1d_backward(Tensor({2, 4, 3}), x, weight),
                      "causal_conv1d: grad_y: expected shape (2, 5, 3), found (2, 4, 3)");
}
