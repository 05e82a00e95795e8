// Routing: top-k with ties, expert capacity and dropping, masked tokens, the balancing losses, and
// the switch router's forward and backward.
#include <cmath>
#include <limits>

#include "blocks/catalog.h"
#include "kernels/routing.h"
#include "routers/switch_router.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;

TEST_CASE("top_k picks the largest scores, lowest index on ties", "[routing]") {
  const Tensor scores = Tensor::from({2, 4}, {0.2f, 0.5f, 0.5f, 0.1f,   //
                                              0.3f, 0.3f, 0.3f, 0.3f});
  std::vector<int32_t> index;
  std::vector<float> value;
  top_k(scores, 1, index, value);
  CHECK(index == std::vector<int32_t>{1, 0});
  top_k(scores, 2, index, value);
  CHECK(index == std::vector<int32_t>{1, 2, 0, 1});
  CHECK(value == std::vector<float>{0.5f, 0.5f, 0.3f, 0.3f});
  CHECK_THROWS_WITH(top_k(scores, 5, index, value), Contains("k must be from 1"));
}

TEST_CASE("capacity is max(floor(capacity_factor * T / X), min_capacity), unlimited when <= 0", "[routing]") {
  CHECK(expert_capacity(1.0, 10, 4, 4) == 4);    // floor(2.5) = 2 < min 4
  CHECK(expert_capacity(1.25, 64, 4, 4) == 20);  // floor(20)
  CHECK(expert_capacity(1.0, 2047, 8, 0) == 255);
  CHECK(expert_capacity(0.0, 64, 4, 4) == -1);
  CHECK(expert_capacity(-1.0, 64, 4, 4) == -1);
}

TEST_CASE("capacity is capped at T, so a huge or infinite capacity_factor drops nothing", "[routing]") {
  CHECK(expert_capacity(8.0, 64, 4, 4) == 64);     // floor(128) capped at T = 64
  CHECK(expert_capacity(1e16, 64, 4, 4) == 64);    // 2.56e17 would still fit an int64
  CHECK(expert_capacity(1e300, 64, 4, 4) == 64);   // past INT64_MAX: once cast to INT64_MIN, so min_capacity
  CHECK(expert_capacity(std::numeric_limits<double>::infinity(), 64, 4, 4) == 64);
  CHECK(expert_capacity(1e300, 2, 4, 4) == 4);     // min_capacity still wins over a smaller T
  std::vector<int32_t> expert(64, 0);              // every token to expert 0
  CHECK(apply_capacity(expert, 1, 4, expert_capacity(1e300, 64, 4, 4), nullptr) == 0);
}

TEST_CASE("tokens claim slots in flattened order; the overflow is dropped", "[routing]") {
  std::vector<int32_t> expert{0, 0, 0, 1, 0};
  CHECK(apply_capacity(expert, 1, 2, 2, nullptr) == 2);
  CHECK(expert == std::vector<int32_t>{0, 0, -1, 1, -1});

  SECTION("masked tokens are not routed and take no slot") {
    std::vector<int32_t> masked{0, 0, 0, 1, 0};
    const std::vector<uint8_t> mask{1, 0, 1, 1, 1};
    CHECK(apply_capacity(masked, 1, 2, 2, &mask) == 1);
    CHECK(masked == std::vector<int32_t>{0, -1, 0, 1, -1});
  }
  SECTION("negative capacity drops nothing") {
    std::vector<int32_t> all{0, 0, 0, 1, 0};
    CHECK(apply_capacity(all, 1, 2, -1, nullptr) == 0);
    CHECK(all == std::vector<int32_t>{0, 0, 0, 1, 0});
  }
  SECTION("first choices claim slots before second choices") {
    // tokens' (first, second) choices: (0, 1), (0, 2), (0, 1); capacity 2
    std::vector<int32_t> top2{0, 1, 0, 2, 0, 1};
    CHECK(apply_capacity(top2, 2, 3, 2, nullptr) == 1);
    CHECK(top2 == std::vector<int32_t>{0, 1, 0, 2, -1, 1});
  }
}

TEST_CASE("the load-balancing loss is X * sum_j f_j * P_j over unmasked tokens", "[routing]") {
  // probs rows (0.7, 0.3), (0.4, 0.6); first choices 0, 1: f = (0.5, 0.5), P = (0.55, 0.45), loss = 1.0
  const Tensor probs = Tensor::from({2, 2}, {0.7f, 0.3f, 0.4f, 0.6f});
  std::vector<double> f, P;
  CHECK(load_balance_loss(probs, {0, 1}, nullptr, &f, &P) == Approx(1.0).epsilon(1e-6));
  CHECK(P[0] == Approx(0.55));
  // both to expert 0: f = (1, 0), P = (0.55, 0.45), loss = 2 * 0.55 = 1.1
  CHECK(load_balance_loss(probs, {0, 0}, nullptr, &f, &P) == Approx(1.1).epsilon(1e-6));
  // the second token masked: f = (1, 0), P = (0.7, 0.3), loss = 1.4
  const std::vector<uint8_t> mask{1, 0};
  CHECK(load_balance_loss(probs, {0, 1}, &mask, &f, &P) == Approx(1.4).epsilon(1e-6));
}

TEST_CASE("the z-loss is the mean squared logsumexp; entropy is normalised by log X", "[routing]") {
  // logits (0, 0): lse = log 2, z = (log 2)^2;  (1, 1): lse = 1 + log 2
  const Tensor logits = Tensor::from({2, 2}, {0.0f, 0.0f, 1.0f, 1.0f});
  const double a = std::log(2.0), b = 1 + std::log(2.0);
  CHECK(router_z_loss(logits, nullptr) == Approx((a * a + b * b) / 2).epsilon(1e-6));
  CHECK(normalized_router_entropy(Tensor::from({1, 4}, {0.25f, 0.25f, 0.25f, 0.25f}), nullptr) ==
        Approx(1.0).epsilon(1e-6));
  CHECK(normalized_router_entropy(Tensor::from({1, 4}, {1.0f, 0.0f, 0.0f, 0.0f}), nullptr) == Approx(0.0));
}

namespace {

struct SwitchFixture {
  RouterSettings settings;
  ParameterStore parameters;
  ConfigTable options{nullptr, "test.toml", "router"};
  std::unique_ptr<Router> make(int64_t experts) {
    register_all();
    return router_registry().get("switch")(RouterContext{settings, options, experts, parameters, "router."});
  }
};

BatchInfo batch_of(int64_t B, int64_t L, const std::vector<uint8_t>* mask, bool training) {
  BatchInfo batch;
  batch.batch = B;
  batch.length = L;
  batch.mask = mask;
  batch.training = training;
  return batch;
}

}  // namespace

TEST_CASE("the switch router sends each token to its arg-max with gate = its probability", "[routing]") {
  SwitchFixture fixture;
  fixture.settings.capacity_factor = 0;  // no dropping
  auto router = fixture.make(3);
  // token 0 prefers expert 2, token 1 ties experts 0 and 1 (lowest index wins)
  const Tensor logits = Tensor::from({2, 3}, {0.0f, 1.0f, 2.0f, 1.0f, 1.0f, 0.0f});
  const Routing routing = router->route(logits, Tensor(), batch_of(1, 2, nullptr, true), nullptr);
  CHECK(routing.expert == std::vector<int32_t>{2, 0});
  const double z0 = 1 + std::exp(1.0) + std::exp(2.0);
  CHECK(routing.gate[0] == Approx(std::exp(2.0) / z0).epsilon(1e-6));
  CHECK(routing.gate[1] == Approx(std::exp(1.0) / (2 * std::exp(1.0) + 1)).epsilon(1e-6));
  CHECK(routing.stats.routed_tokens == 2);
  CHECK(routing.stats.dropped == 0);
  CHECK(routing.stats.load == std::vector<double>{0.5, 0.0, 0.5});
}

TEST_CASE("the switch router drops overflow and skips masked tokens", "[routing]") {
  SwitchFixture fixture;
  fixture.settings.capacity_factor = 1.0;
  fixture.settings.min_capacity = 1;
  auto router = fixture.make(2);
  // four tokens all prefer expert 0; token 1 is masked. T = 3 unmasked, C = max(floor(1.0*3/2), 1) = 1
  const Tensor logits = Tensor::from({4, 2}, {1, 0, 1, 0, 1, 0, 1, 0});
  const std::vector<uint8_t> mask{1, 0, 1, 1};
  const Routing routing = router->route(logits, Tensor(), batch_of(2, 2, &mask, true), nullptr);
  CHECK(routing.expert == std::vector<int32_t>{0, -1, -1, -1});
  CHECK(routing.gate[1] == 0.0f);
  CHECK(routing.gate[2] == 0.0f);
  CHECK(routing.stats.dropped == 2);
  CHECK(routing.stats.routed_tokens == 3);

  SECTION("eval_capacity_factor applies outside training") {
    fixture.settings.eval_capacity_factor = 2.0;  // C = 3 at evaluation
    auto eval_router = fixture.make(2);
    const Routing eval = eval_router->route(logits, Tensor(), batch_of(2, 2, &mask, false), nullptr);
    CHECK(eval.expert == std::vector<int32_t>{0, -1, 0, 0});
  }
}

TEST_CASE("the switch router's backward matches finite differences of gate, aux and z losses", "[routing]") {
  SwitchFixture fixture;
  fixture.settings.capacity_factor = 1.0;
  fixture.settings.min_capacity = 2;
  fixture.settings.aux_loss_coef = 0.3;
  fixture.settings.z_loss_coef = 0.05;
  const int64_t T = 6, X = 3;
  auto router = fixture.make(X);
  const Tensor logits = test::random_tensor({T, X}, 11, 2.0f);
  const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
  std::unique_ptr<SavedActivations> saved;
  const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask, true), &saved);
  const std::vector<double> gate_weights = test::to_double(test::random_tensor({T}, 12));
  const float aux_scale = 0.7f;

  // The objective in double precision with the routing decisions held fixed:
  // Σ_t w_t · gate_t + aux_scale · (aux + z), gate_t = softmax(logits_t)[expert_t].
  std::vector<double> fraction(X, 0.0);
  int64_t kept = 0;
  for (int64_t t = 0; t < T; ++t) kept += mask[t];
  {
    std::vector<int32_t> first;
    std::vector<float> unused;
    top_k(logits, 1, first, unused);
    for (int64_t t = 0; t < T; ++t) fraction[first[t]] += mask[t] ? 1.0 / kept : 0.0;
  }
  auto objective = [&](const std::vector<double>& x) {
    double total = 0, aux = 0, z = 0;
    std::vector<double> P(X, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      double top = x[t * X];
      for (int64_t j = 1; j < X; ++j) top = std::max(top, x[t * X + j]);
      double sum = 0;
      for (int64_t j = 0; j < X; ++j) sum += std::exp(x[t * X + j] - top);
      const double lse = top + std::log(sum);
      if (!mask[t]) continue;
      for (int64_t j = 0; j < X; ++j) P[j] += std::exp(x[t * X + j] - lse) / kept;
      z += lse * lse / kept;
      const int32_t e = routing.expert[t];
      if (e >= 0) total += gate_weights[t] * std::exp(x[t * X + e] - lse);
    }
    for (int64_t j = 0; j < X; ++j) aux += X * fraction[j] * P[j];
    return total + aux_scale * (0.3 * aux + 0.05 * z);
  };
  const std::vector<double> expected = test::finite_difference(objective, test::to_double(logits));
  std::vector<float> grad_gate(gate_weights.begin(), gate_weights.end());
  const Tensor grad = router->backward(grad_gate, *saved, aux_scale).logits;
  // float32 softmax and sums of 6 terms against a double reference: 1e-5 absolute.
  test::require_close(grad, expected, 1e-5, 1e-4, "switch router dL/dlogits");
  // The routing's own statistics agree with the objective's pieces.
  CHECK(routing.stats.aux_loss > 0);
  CHECK(routing.stats.z_loss > 0);
}
