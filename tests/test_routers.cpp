// The router variants (routers/*): hand-computed routing for each, ties, capacity and dropping,
// masked tokens, no capacity, each backward against central finite differences of a double-precision
// objective with the decisions held fixed, option errors, hash determinism, random re-drawing,
// Sinkhorn balance, aux_free's bias balancing the load, and the MoE layer's shared experts.
// Shape letters: T tokens, X experts, k assignments per token, D dim.
#include <cmath>
#include <map>

#include "blocks/catalog.h"
#include "blocks/model.h"
#include "blocks/random.h"
#include "kernels/activation.h"
#include "kernels/elementwise.h"
#include "kernels/routing.h"
#include "routers/router_common.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;

namespace {

// A router built from the keys of a [router] table, as an experiment file would build it.
struct RouterUnderTest {
  ExperimentFile file;
  ConfigTable options;
  RouterSettings settings;
  ParameterStore parameters;
  std::unique_ptr<Router> router;

  RouterUnderTest(const std::string& keys, int64_t experts, int64_t dim = 4)
      : file(ExperimentFile::parse("[router]\n" + keys, "test.toml")), options(file.table("router")) {
    register_all();
    settings = read_router_settings(options);
    router = router_registry().get(settings.name)(RouterContext{settings, options, experts, parameters, "router.", dim});
  }
  Router* operator->() { return router.get(); }
};

BatchInfo batch_of(int64_t B, int64_t L, const std::vector<uint8_t>* mask = nullptr, bool training = true,
                   Random* random = nullptr, const std::vector<int32_t>* tokens = nullptr) {
  BatchInfo batch;
  batch.batch = B;
  batch.length = L;
  batch.mask = mask;
  batch.training = training;
  batch.random = random;
  batch.tokens = tokens;
  return batch;
}

std::vector<double> softmax_row(const Tensor& logits, int64_t t) {
  const int64_t X = logits.size(1);
  std::vector<double> p(static_cast<size_t>(X));
  double total = 0;
  for (int64_t j = 0; j < X; ++j) total += p[j] = std::exp(double(logits[t * X + j]));
  for (double& value : p) value /= total;
  return p;
}

// max load / mean load − 1 (the trainer's max_violation)
double max_violation(const std::vector<double>& load) {
  double mean = 0, peak = 0;
  for (double value : load) mean += value / static_cast<double>(load.size());
  for (double value : load) peak = std::max(peak, value);
  return mean > 0 ? peak / mean - 1.0 : 0.0;
}

// The objective every router's backward is checked against, in double precision with the routing
// decisions (chosen, kept, f) held fixed:
//   Σ_a w_a · gate_a + scale · (aux · X Σ_j f_j P_j + z · mean_t lse(logits_t)²)
// gate_a = s[t, e_a] / (normalize ? Σ_{chosen r} s[t, e_r] : 1), s = softmax or sigmoid of `pre`
// (1 for routers without scores); P_j the mean over unmasked tokens of softmax p, or of sigmoid s
// normalised over the experts.
struct Reference {
  Reference(GateScores kind, int64_t T, int64_t X, int64_t k) : kind(kind), T(T), X(X), k(k) {}
  GateScores kind;
  int64_t T, X, k;
  std::vector<int32_t> chosen, kept;  // T·k
  bool normalize = false;
  std::vector<uint8_t> mask;          // T
  std::vector<double> fraction;       // X
  double aux = 0, z = 0, scale = 1;
  std::vector<double> weights;        // T·k

  double operator()(const std::vector<double>& pre, const std::vector<double>& logits) const {
    int64_t kept_tokens = 0;
    for (int64_t t = 0; t < T; ++t) kept_tokens += mask[t];
    double total = 0, z_total = 0;
    std::vector<double> P(X, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      if (!mask[t]) continue;
      std::vector<double> s(X), p(X);
      double top = pre[t * X], row_total = 0;
      for (int64_t j = 1; j < X; ++j) top = std::max(top, pre[t * X + j]);
      for (int64_t j = 0; j < X; ++j) {
        s[j] = kind == GateScores::sigmoid ? 1 / (1 + std::exp(-pre[t * X + j])) : std::exp(pre[t * X + j] - top);
        row_total += s[j];
      }
      for (int64_t j = 0; j < X; ++j) {
        if (kind == GateScores::softmax) s[j] /= row_total;
        p[j] = kind == GateScores::softmax ? s[j] : s[j] / row_total;
        P[j] += p[j] / kept_tokens;
      }
      double divisor = 0;
      for (int64_t r = 0; r < k; ++r) divisor += chosen[t * k + r] >= 0 ? s[chosen[t * k + r]] : 0.0;
      for (int64_t r = 0; r < k; ++r) {
        const int32_t e = kept[t * k + r];
        if (e < 0) continue;
        const double gate = kind == GateScores::none ? 1.0 : s[e] / (normalize ? divisor : 1.0);
        total += weights[t * k + r] * gate;
      }
      double z_top = logits[t * X], z_sum = 0;
      for (int64_t j = 1; j < X; ++j) z_top = std::max(z_top, logits[t * X + j]);
      for (int64_t j = 0; j < X; ++j) z_sum += std::exp(logits[t * X + j] - z_top);
      const double lse = z_top + std::log(z_sum);
      z_total += lse * lse / kept_tokens;
    }
    double balance = 0;
    if (kind != GateScores::none) {
      for (int64_t j = 0; j < X; ++j) balance += X * fraction[j] * P[j];
    }
    return total + scale * (aux * balance + z * z_total);
  }
};

// chosen = the top k of `scores` per token (ties to the lowest index), −1 on masked tokens.
std::vector<int32_t> top_choices(const Tensor& scores, int64_t k, const std::vector<uint8_t>& mask) {
  std::vector<int32_t> chosen;
  std::vector<float> unused;
  top_k(scores, k, chosen, unused);
  for (size_t a = 0; a < chosen.size(); ++a) {
    if (!mask[a / static_cast<size_t>(k)]) chosen[a] = -1;
  }
  return chosen;
}

// f_j: the fraction of the (unmasked) choices that are j.
std::vector<double> fraction_of(const std::vector<int32_t>& choices, int64_t X) {
  std::vector<double> f(X, 0.0);
  double count = 0;
  for (int32_t j : choices) {
    if (j < 0) continue;
    f[j] += 1;
    count += 1;
  }
  for (double& value : f) value /= count;
  return f;
}

// dL/dlogits of the router against the finite difference of the reference, whose weights become dL/dgate.
void check_logit_gradient(Router& router, const SavedActivations& saved, const Reference& reference,
                          const Tensor& logits, float aux_scale, const std::string& what) {
  const std::vector<double> expected = test::finite_difference(
      [&](const std::vector<double>& x) { return reference(x, x); }, test::to_double(logits));
  const std::vector<float> grad_gate(reference.weights.begin(), reference.weights.end());
  const RouterGrads grads = router.backward(grad_gate, saved, aux_scale);
  // float32 scores and sums of a few terms against a double reference: 1e-5 absolute (as the switch test).
  test::require_close(grads.logits, expected, 1e-5, 1e-4, what + " dL/dlogits");
}

}  // namespace

// ---- shared pieces -------------------------------------------------------------------------------

TEST_CASE("batch capacity counts assignments: max(floor(factor * k * T / X), min_capacity)", "[routers]") {
  RouterSettings settings;
  settings.capacity_factor = 1.25;
  settings.min_capacity = 4;
  const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1, 1, 0, 1, 1};
  CHECK(batch_capacity(settings, batch_of(2, 5), 2, 4) == 6);            // floor(1.25·2·10/4) = 6
  CHECK(batch_capacity(settings, batch_of(2, 5, &mask), 2, 4) == 5);     // 8 unmasked tokens: floor(5)
  CHECK(batch_capacity(settings, batch_of(2, 5), 1, 4) == 4);            // floor(3.125) < min 4
  settings.eval_capacity_factor = 2.0;
  CHECK(batch_capacity(settings, batch_of(2, 5, nullptr, false), 2, 4) == 10);
  CHECK(batch_capacity(settings, batch_of(2, 5, nullptr, true), 2, 4) == 6);
  BatchInfo dropless = batch_of(2, 5);
  dropless.dropless = true;
  CHECK(batch_capacity(settings, dropless, 2, 4) == -1);
  settings.capacity_factor = 0;
  CHECK(batch_capacity(settings, batch_of(2, 5), 2, 4) == -1);
}

TEST_CASE("gates are the chosen scores, normalised over the token's choices before capacity", "[routers]") {
  const Tensor scores = Tensor::from({2, 3}, {0.2f, 0.3f, 0.5f, 0.6f, 0.3f, 0.1f});
  const std::vector<int32_t> chosen{2, 1, 0, 1}, kept{2, -1, 0, 1};
  CHECK(gather_gates(scores, chosen, kept, 2, false) == std::vector<float>{0.5f, 0.0f, 0.6f, 0.3f});
  const std::vector<float> normalized = gather_gates(scores, chosen, kept, 2, true);
  CHECK(normalized[0] == Approx(0.5 / 0.8));
  CHECK(normalized[1] == 0.0f);  // dropped: 0, and the kept gate is not renormalised
  CHECK(normalized[2] == Approx(0.6 / 0.9));
  CHECK(normalized[3] == Approx(0.3 / 0.9));
  CHECK(assignment_load(chosen, 2, 3, nullptr) == std::vector<double>{0.25, 0.5, 0.25});
}

// ---- switch (the seed's router; its own tests are in test_routing.cpp) ----------------------------

TEST_CASE("switch: masked tokens and capacity_factor <= 0, backward with dropping", "[routers]") {
  RouterUnderTest router("name = \"switch\"\ncapacity_factor = 0.0\naux_loss_coef = 0.2\n", 3);
  const Tensor logits = test::random_tensor({6, 3}, 3, 2.0f);
  const std::vector<uint8_t> mask{1, 0, 1, 1, 1, 1};
  std::unique_ptr<SavedActivations> saved;
  const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask), &saved);
  CHECK(routing.expert[1] == -1);
  CHECK(routing.stats.dropped == 0);
  Reference reference(GateScores::softmax, 6, 3, 1);
  reference.chosen = top_choices(logits, 1, mask);
  reference.kept = routing.expert;
  reference.mask = mask;
  reference.fraction = fraction_of(reference.chosen, 3);
  reference.aux = 0.2;
  reference.scale = 0.5;
  reference.weights = test::to_double(test::random_tensor({6}, 4));
  check_logit_gradient(*router.router, *saved, reference, logits, 0.5f, "switch");
}

// ---- topk ----------------------------------------------------------------------------------------

TEST_CASE("topk: the k most probable experts, ties to the lowest index, gates renormalised", "[routers]") {
  // token 0 ranks experts 2, 1, 0; token 1 ties experts 0 and 1
  const Tensor logits = Tensor::from({2, 3}, {0.0f, 1.0f, 2.0f, 1.0f, 1.0f, 0.0f});
  const double e = std::exp(1.0);
  SECTION("normalize_gates (default)") {
    RouterUnderTest router("name = \"topk\"\ncapacity_factor = 0.0\n", 3);
    const Routing routing = router->route(logits, Tensor(), batch_of(1, 2), nullptr);
    CHECK(routing.k == 2);
    CHECK(routing.expert == std::vector<int32_t>{2, 1, 0, 1});
    CHECK(routing.gate[0] == Approx(e * e / (e * e + e)));
    CHECK(routing.gate[1] == Approx(e / (e * e + e)));
    CHECK(routing.gate[2] == Approx(0.5));
    CHECK(routing.gate[3] == Approx(0.5));
    CHECK(routing.stats.assignments == 4);
    CHECK(routing.stats.load == std::vector<double>{0.25, 0.5, 0.25});
  }
  SECTION("raw probabilities") {
    RouterUnderTest router("name = \"topk\"\ncapacity_factor = 0.0\nnormalize_gates = false\n", 3);
    const Routing routing = router->route(logits, Tensor(), batch_of(1, 2), nullptr);
    CHECK(routing.gate[0] == Approx(softmax_row(logits, 0)[2]));
    CHECK(routing.gate[3] == Approx(softmax_row(logits, 1)[1]));
  }
  SECTION("k = 3 of 3") {
    RouterUnderTest router("name = \"topk\"\ntop_k = 3\ncapacity_factor = 0.0\n", 3);
    const Routing routing = router->route(logits, Tensor(), batch_of(1, 2), nullptr);
    CHECK(routing.expert == std::vector<int32_t>{2, 1, 0, 0, 1, 2});
  }
}

TEST_CASE("topk: capacity per assignment, first choices claim slots before second choices", "[routers]") {
  // choices (0, 1), (0, 2), (0, 1); C = floor(1.0 · 2 · 3 / 3) = 2: token 2's first choice is dropped,
  // its second kept (expert 1 holds only token 0's second choice)
  const Tensor logits = Tensor::from({3, 3}, {2, 1, 0, 2, 0, 1, 2, 1, 0});
  RouterUnderTest router("name = \"topk\"\ncapacity_factor = 1.0\nmin_capacity = 0\n", 3);
  const Routing routing = router->route(logits, Tensor(), batch_of(1, 3), nullptr);
  CHECK(routing.expert == std::vector<int32_t>{0, 1, 0, 2, -1, 1});
  CHECK(routing.stats.dropped == 1);
  CHECK(routing.gate[4] == 0.0f);
  const double e = std::exp(1.0);
  CHECK(routing.gate[5] == Approx(e / (e * e + e)));  // normalised over both choices, as before dropping
  // load before dropping counts every choice: expert 0 three, expert 1 two, expert 2 one of six
  CHECK(routing.stats.load[0] == Approx(0.5));
  CHECK(routing.stats.load[1] == Approx(1.0 / 3));
  CHECK(routing.stats.load[2] == Approx(1.0 / 6));

  SECTION("masked tokens take no slot; capacity counts unmasked tokens only") {
    const Tensor four = Tensor::from({4, 3}, {2, 1, 0, 2, 0, 1, 2, 1, 0, 2, 1, 0});
    const std::vector<uint8_t> mask{1, 0, 1, 1};  // C = floor(2 · 3 / 3) = 2
    const Routing masked = router->route(four, Tensor(), batch_of(2, 2, &mask), nullptr);
    CHECK(masked.expert == std::vector<int32_t>{0, 1, -1, -1, 0, 1, -1, -1});
    CHECK(masked.stats.routed_tokens == 3);
    CHECK(masked.stats.dropped == 2);  // token 3's two choices: experts 0 and 1 are full
    CHECK(masked.stats.droppable == 6);  // of the unmasked tokens' 3 · 2 choices
  }
  SECTION("every token's first choice is placed before any token's second choice") {
    // choices (0, 1) and (1, 0); C = floor(0.5 · 2 · 2 / 2) = 1: both first choices take the slots, so both
    // second choices are dropped (token by token, token 0 would take both and token 1 none).
    RouterUnderTest half("name = \"topk\"\ncapacity_factor = 0.5\nmin_capacity = 0\n", 2);
    const Routing crossed = half->route(Tensor::from({2, 2}, {1, 0, 0, 1}), Tensor(), batch_of(1, 2), nullptr);
    CHECK(crossed.expert == std::vector<int32_t>{0, -1, 1, -1});
    CHECK(crossed.stats.dropped == 2);
  }
  SECTION("capacity_factor <= 0 and dropless drop nothing") {
    RouterUnderTest unlimited("name = \"topk\"\ncapacity_factor = -1.0\n", 3);
    CHECK(unlimited->route(logits, Tensor(), batch_of(1, 3), nullptr).stats.dropped == 0);
    BatchInfo dropless = batch_of(1, 3);
    dropless.dropless = true;
    const Routing all = router->route(logits, Tensor(), dropless, nullptr);
    CHECK(all.expert == std::vector<int32_t>{0, 1, 0, 2, 0, 1});
  }
}

TEST_CASE("topk: backward matches finite differences of gates, aux and z losses", "[routers]") {
  for (const bool normalize : {true, false}) {
    INFO("normalize_gates " << normalize);
    RouterUnderTest router(std::string("name = \"topk\"\ncapacity_factor = 1.0\nmin_capacity = 1\naux_loss_coef = "
                                       "0.3\nz_loss_coef = 0.05\nnormalize_gates = ") +
                               (normalize ? "true" : "false") + "\n",
                           3);
    const int64_t T = 6, X = 3, k = 2;
    const Tensor logits = test::random_tensor({T, X}, 21, 2.0f);
    const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
    std::unique_ptr<SavedActivations> saved;
    const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask), &saved);
    CHECK(routing.stats.dropped > 0);  // C = floor(2 · 5 / 3) = 3 of 10 assignments over 3 experts
    Reference reference(GateScores::softmax, T, X, k);
    reference.chosen = top_choices(logits, k, mask);
    reference.kept = routing.expert;
    reference.normalize = normalize;
    reference.mask = mask;
    reference.fraction = fraction_of(top_choices(logits, 1, mask), X);  // GShard: first choices
    reference.aux = 0.3;
    reference.z = 0.05;
    reference.scale = 0.7;
    reference.weights = test::to_double(test::random_tensor({T * k}, 22));
    check_logit_gradient(*router.router, *saved, reference, logits, 0.7f, "topk");
    CHECK(routing.stats.aux_loss ==
          Approx(0.3 * load_balance_loss(softmax_forward(logits), top_choices(logits, 1, mask), &mask, nullptr, nullptr)));
  }
}

// ---- noisy_topk ----------------------------------------------------------------------------------

TEST_CASE("noisy_topk: noise in training only, gates softmax over the k noisy logits", "[routers]") {
  const int64_t T = 5, X = 4;
  const Tensor logits = test::random_tensor({T, X}, 31, 1.0f);
  RouterUnderTest router("name = \"noisy_topk\"\nnoise = \"fixed\"\nnoise_std = 0.5\ncapacity_factor = 0.0\n", X);
  SECTION("evaluation: no noise, the same routing as topk") {
    RouterUnderTest topk("name = \"topk\"\ncapacity_factor = 0.0\n", X);
    const Routing noisy = router->route(logits, Tensor(), batch_of(1, T, nullptr, false), nullptr);
    const Routing plain = topk->route(logits, Tensor(), batch_of(1, T, nullptr, false), nullptr);
    CHECK(noisy.expert == plain.expert);
    CHECK(noisy.gate == plain.gate);
  }
  SECTION("training: H = logits + noise_std · ε with ε from the step's generator") {
    Random random(5), replica(5);
    Tensor epsilon({T, X});
    replica.fill_normal(epsilon, 0.0, 1.0);
    Tensor noisy_logits = logits.clone();
    for (int64_t i = 0; i < T * X; ++i) noisy_logits[i] += 0.5f * epsilon[i];
    const Routing routing = router->route(logits, Tensor(), batch_of(1, T, nullptr, true, &random), nullptr);
    const std::vector<int32_t> expected = top_choices(noisy_logits, 2, std::vector<uint8_t>(T, 1));
    CHECK(routing.expert == expected);
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<double> p = softmax_row(noisy_logits, t);
      const double total = p[expected[t * 2]] + p[expected[t * 2 + 1]];
      CHECK(routing.gate[t * 2] == Approx(p[expected[t * 2]] / total).epsilon(1e-5));
      CHECK(routing.gate[t * 2 + 1] == Approx(p[expected[t * 2 + 1]] / total).epsilon(1e-5));
    }
  }
  SECTION("training without a generator is an error") {
    CHECK_THROWS_WITH(router->route(logits, Tensor(), batch_of(1, T, nullptr, true), nullptr),
                      Contains("no random generator"));
  }
}

TEST_CASE("noisy_topk: learned noise backward matches finite differences in logits, input and w_noise",
          "[routers]") {
  const int64_t T = 6, X = 3, D = 4, k = 2;
  RouterUnderTest router("name = \"noisy_topk\"\ncapacity_factor = 1.0\nmin_capacity = 1\naux_loss_coef = 0.3\n"
                         "z_loss_coef = 0.05\n",
                         X, D);
  Parameter& w_noise = router.parameters.get("router.w_noise");
  REQUIRE(w_noise.value.shape() == Shape{X, D});
  w_noise.value.copy_from(test::random_tensor({X, D}, 41, 0.8f));
  const Tensor logits = test::random_tensor({T, X}, 42, 1.5f);
  const Tensor input = test::random_tensor({T, D}, 43, 1.0f);
  const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
  Random random(44), replica(44);
  Tensor epsilon({T, X});
  replica.fill_normal(epsilon, 0.0, 1.0);
  std::unique_ptr<SavedActivations> saved;
  const Routing routing = router->route(logits, input, batch_of(2, 3, &mask, true, &random), &saved);

  // x = [logits (T·X), u (T·D), W (X·D)];  H = logits + ε ⊙ softplus(u · Wᵀ)
  auto noisy = [&](const std::vector<double>& x) {
    std::vector<double> H(x.begin(), x.begin() + T * X);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < X; ++j) {
        double n = 0;
        for (int64_t d = 0; d < D; ++d) n += x[T * X + t * D + d] * x[T * X + T * D + j * D + d];
        H[t * X + j] += epsilon[t * X + j] * std::log1p(std::exp(n));
      }
    }
    return H;
  };
  std::vector<double> point = test::to_double(logits);
  for (double value : test::to_double(input)) point.push_back(value);
  for (double value : test::to_double(w_noise.value)) point.push_back(value);
  const std::vector<double> H = noisy(point);
  Tensor noisy_logits({T, X});
  for (int64_t i = 0; i < T * X; ++i) noisy_logits[i] = static_cast<float>(H[i]);

  Reference reference(GateScores::softmax, T, X, k);
  reference.chosen = top_choices(noisy_logits, k, mask);
  reference.kept = routing.expert;
  reference.normalize = true;
  reference.mask = mask;
  reference.fraction = fraction_of(top_choices(noisy_logits, 1, mask), X);
  reference.aux = 0.3;
  reference.z = 0.05;
  reference.scale = 0.7;
  reference.weights = test::to_double(test::random_tensor({T * k}, 45));
  const std::vector<double> expected = test::finite_difference(
      [&](const std::vector<double>& x) {
        return reference(noisy(x), std::vector<double>(x.begin(), x.begin() + T * X));  // z-loss: noiseless
      },
      point);
  const std::vector<float> grad_gate(reference.weights.begin(), reference.weights.end());
  const RouterGrads grads = router->backward(grad_gate, *saved, 0.7f);
  test::require_close(grads.logits, std::vector<double>(expected.begin(), expected.begin() + T * X), 1e-5, 1e-4,
                      "noisy_topk dL/dlogits");
  REQUIRE(grads.input.defined());
  test::require_close(grads.input, std::vector<double>(expected.begin() + T * X, expected.begin() + T * X + T * D),
                      1e-5, 1e-4, "noisy_topk dL/du");
  test::require_close(w_noise.grad, std::vector<double>(expected.begin() + T * X + T * D, expected.end()), 1e-5,
                      1e-4, "noisy_topk dL/dw_noise");
}

// ---- expert_choice -------------------------------------------------------------------------------

TEST_CASE("expert_choice: each expert takes its top-C tokens, ties to the lower token", "[routers]") {
  // probabilities: tokens 0 and 1 (equal rows) prefer expert 0, token 2 expert 1, token 3 is uniform
  const Tensor logits = Tensor::from({4, 3}, {2, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0});
  SECTION("C = floor(1.5 · 4 / 3) = 2") {
    RouterUnderTest router("name = \"expert_choice\"\ncapacity_factor = 1.5\nmin_capacity = 0\n", 3);
    const Routing routing = router->route(logits, Tensor(), batch_of(1, 4), nullptr);
    CHECK(routing.k == 3);
    // expert 0: tokens 0, 1;  expert 1: tokens 2, 3;  expert 2: tokens 3, 2
    CHECK(routing.expert == std::vector<int32_t>{0, -1, -1, 0, -1, -1, -1, 1, 2, -1, 1, 2});
    CHECK(routing.gate[7] == Approx(softmax_row(logits, 2)[1]));
    CHECK(routing.gate[11] == Approx(1.0 / 3));
    CHECK(routing.stats.dropped == 0);
    CHECK(routing.stats.assignments == 12);
    CHECK(max_violation(routing.stats.load) == Approx(0.0));
    CHECK(routing.stats.aux_loss == 0.0);  // no aux loss unless aux_loss_coef is set
  }
  SECTION("C = 1: the tie goes to token 0, token 1 is routed nowhere") {
    RouterUnderTest router("name = \"expert_choice\"\ncapacity_factor = 0.75\nmin_capacity = 0\n", 3);
    const Routing routing = router->route(logits, Tensor(), batch_of(1, 4), nullptr);
    CHECK(routing.expert == std::vector<int32_t>{0, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, 2});
    CHECK(routing.stats.dropped == 1);
    CHECK(routing.stats.droppable == 4);  // 1 of 4 tokens, not of the 12 (token, expert) slots
  }
  SECTION("masked tokens are never chosen; C counts unmasked tokens") {
    RouterUnderTest router("name = \"expert_choice\"\ncapacity_factor = 1.5\nmin_capacity = 0\n", 3);
    const std::vector<uint8_t> mask{0, 1, 1, 1};  // C = floor(1.5 · 3 / 3) = 1
    const Routing routing = router->route(logits, Tensor(), batch_of(2, 2, &mask), nullptr);
    CHECK(routing.expert == std::vector<int32_t>{-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2});
    CHECK(routing.stats.routed_tokens == 3);
    // Every unmasked token is chosen: none dropped, of the 3 that could be; the masked one is not counted.
    CHECK(routing.stats.dropped == 0);
    CHECK(routing.stats.droppable == 3);
  }
  SECTION("without capacity it falls back to top-1 token choice") {
    RouterUnderTest router("name = \"expert_choice\"\ncapacity_factor = 0.0\n", 3);
    const Routing routing = router->route(logits, Tensor(), batch_of(1, 4), nullptr);
    CHECK(routing.k == 1);
    CHECK(routing.expert == std::vector<int32_t>{0, 0, 1, 0});
    RouterUnderTest bounded("name = \"expert_choice\"\n", 3);
    BatchInfo dropless = batch_of(1, 4, nullptr, false);
    dropless.dropless = true;
    CHECK(bounded->route(logits, Tensor(), dropless, nullptr).expert == std::vector<int32_t>{0, 0, 1, 0});
  }
  SECTION("it says that it sees the future") {
    RouterUnderTest router("name = \"expert_choice\"\n", 3);
    CHECK_THAT(router->caveat(), Contains("leaks the future"));
    CHECK_THAT(router_registry().description("expert_choice"), Contains("leaks the future"));
  }
}

TEST_CASE("expert_choice: backward matches finite differences (aux loss when set)", "[routers]") {
  for (const bool with_aux : {false, true}) {
    INFO("aux_loss_coef set: " << with_aux);
    RouterUnderTest router(std::string("name = \"expert_choice\"\ncapacity_factor = 1.0\nmin_capacity = 0\n"
                                       "z_loss_coef = 0.05\n") +
                               (with_aux ? "aux_loss_coef = 0.3\n" : ""),
                           3);
    const int64_t T = 6, X = 3;
    const Tensor logits = test::random_tensor({T, X}, 51, 2.0f);
    const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
    std::unique_ptr<SavedActivations> saved;
    const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask), &saved);
    CHECK((routing.stats.aux_loss > 0) == with_aux);
    Reference reference(GateScores::softmax, T, X, X);
    reference.chosen = routing.expert;  // no capacity after the experts' choice
    reference.kept = routing.expert;
    reference.mask = mask;
    reference.fraction = fraction_of(top_choices(logits, 1, mask), X);
    reference.aux = with_aux ? 0.3 : 0.0;
    reference.z = 0.05;
    reference.scale = 0.7;
    reference.weights = test::to_double(test::random_tensor({T * X}, 52));
    check_logit_gradient(*router.router, *saved, reference, logits, 0.7f, "expert_choice");
  }
}

// ---- hash ----------------------------------------------------------------------------------------

TEST_CASE("hash: a fixed hash of the token id (or position) picks the expert, gate 1", "[routers]") {
  const int64_t X = 5;
  const std::vector<int32_t> tokens{3, 17, 3, 42, 17, 9};
  const Tensor logits = test::random_tensor({6, X}, 61);
  RouterUnderTest router("name = \"hash\"\ncapacity_factor = 0.0\n", X);
  const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, nullptr, true, nullptr, &tokens), nullptr);
  for (size_t t = 0; t < tokens.size(); ++t) {
    CHECK(routing.expert[t] == static_cast<int32_t>(splitmix64(static_cast<uint64_t>(tokens[t])) % X));
    CHECK(routing.gate[t] == 1.0f);
  }
  CHECK(routing.expert[0] == routing.expert[2]);
  CHECK(routing.stats.entropy == 0.0);
  CHECK(routing.stats.aux_loss == 0.0);
  CHECK(routing.stats.mean_probability == routing.stats.load);

  SECTION("deterministic: other logits, evaluation, another router instance") {
    RouterUnderTest other("name = \"hash\"\ncapacity_factor = 0.0\n", X);
    const Routing again = other->route(test::random_tensor({6, X}, 62), Tensor(),
                                       batch_of(2, 3, nullptr, false, nullptr, &tokens), nullptr);
    CHECK(again.expert == routing.expert);
  }
  SECTION("embedding input: the absolute position is hashed") {
    BatchInfo batch = batch_of(2, 3);
    batch.start_position = 10;
    const Routing positional = router->route(logits, Tensor(), batch, nullptr);
    for (int64_t t = 0; t < 6; ++t) {
      CHECK(positional.expert[t] == static_cast<int32_t>(splitmix64(static_cast<uint64_t>(10 + t % 3)) % X));
    }
  }
  SECTION("capacity drops the overflow in token order; masked tokens are skipped") {
    RouterUnderTest bounded("name = \"hash\"\ncapacity_factor = 1.0\nmin_capacity = 2\n", X);
    const std::vector<int32_t> same(6, 7);
    const std::vector<uint8_t> mask{1, 0, 1, 1, 1, 1};
    const Routing dropped = bounded->route(logits, Tensor(), batch_of(2, 3, &mask, true, nullptr, &same), nullptr);
    const int32_t e = static_cast<int32_t>(splitmix64(7) % X);
    CHECK(dropped.expert == std::vector<int32_t>{e, -1, e, -1, -1, -1});
    CHECK(dropped.stats.dropped == 3);
    CHECK(dropped.gate == std::vector<float>{1, 0, 1, 0, 0, 0});
  }
}

TEST_CASE("hash and random: no gradient reaches the logits except from a z-loss", "[routers]") {
  for (const std::string name : {"hash", "random"}) {
    INFO(name);
    const int64_t T = 6, X = 3;
    const Tensor logits = test::random_tensor({T, X}, 63, 2.0f);
    const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
    Random random(1);
    for (const double z : {0.0, 0.05}) {
      RouterUnderTest router("name = \"" + name + "\"\nz_loss_coef = " + std::to_string(z) + "\n", X);
      std::unique_ptr<SavedActivations> saved;
      const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask, true, &random), &saved);
      Reference reference(GateScores::none, T, X, 1);
      reference.chosen = reference.kept = routing.expert;
      reference.mask = mask;
      reference.z = z;
      reference.scale = 0.7;
      reference.weights = test::to_double(test::random_tensor({T}, 64));
      check_logit_gradient(*router.router, *saved, reference, logits, 0.7f, name);
    }
  }
}

// ---- random --------------------------------------------------------------------------------------

TEST_CASE("random: re-drawn every training step, uniform, fixed at evaluation", "[routers]") {
  const int64_t X = 4, T = 4000;
  const Tensor logits({T, X});
  RouterUnderTest router("name = \"random\"\ncapacity_factor = 0.0\n", X);
  Random step1(1), step2(2);
  const Routing first = router->route(logits, Tensor(), batch_of(4, 1000, nullptr, true, &step1), nullptr);
  const Routing second = router->route(logits, Tensor(), batch_of(4, 1000, nullptr, true, &step2), nullptr);
  const Routing third = router->route(logits, Tensor(), batch_of(4, 1000, nullptr, true, &step1), nullptr);
  CHECK(first.expert != second.expert);
  CHECK(first.expert != third.expert);  // the same generator keeps drawing
  // each expert gets 1/4 of 4000 tokens: binomial std 0.007, so 0.03 is over 4 std
  for (double load : first.stats.load) CHECK(load == Approx(0.25).margin(0.03));
  CHECK(first.gate[0] == 1.0f);
  CHECK(first.stats.entropy == 0.0);

  const Routing eval1 = router->route(logits, Tensor(), batch_of(4, 1000, nullptr, false), nullptr);
  const Routing eval2 = router->route(logits, Tensor(), batch_of(4, 1000, nullptr, false), nullptr);
  CHECK(eval1.expert == eval2.expert);
  for (double load : eval1.stats.load) CHECK(load == Approx(0.25).margin(0.03));
  CHECK_THROWS_WITH(router->route(logits, Tensor(), batch_of(4, 1000, nullptr, true), nullptr),
                    Contains("no random generator"));
}

// ---- sinkhorn ------------------------------------------------------------------------------------

TEST_CASE("sinkhorn: the balanced matrix has equal column sums and unit row sums", "[routers]") {
  const int64_t T = 12, X = 3;
  const Tensor logits = test::random_tensor({T, X}, 71, 3.0f);
  const std::vector<uint8_t> mask{1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1};  // 10 unmasked
  const Tensor balanced = sinkhorn_balance(logits, 50, &mask);
  for (int64_t j = 0; j < X; ++j) {
    double column = 0;
    for (int64_t t = 0; t < T; ++t) column += balanced[t * X + j];
    CHECK(column == Approx(10.0 / 3).epsilon(1e-5));
  }
  for (int64_t t = 0; t < T; ++t) {
    double row = 0;
    for (int64_t j = 0; j < X; ++j) row += balanced[t * X + j];
    CHECK(row == Approx(mask[t] ? 1.0 : 0.0).margin(1e-4));
  }
}

TEST_CASE("sinkhorn: balanced top-1 in training, arg-max at evaluation, gate = softmax prob", "[routers]") {
  // every token prefers expert 0; balanced, the two with the strongest preference keep it
  const Tensor logits = Tensor::from({4, 2}, {2.0f, 0, 1.5f, 0, 1.0f, 0, 0.5f, 0});
  RouterUnderTest router("name = \"sinkhorn\"\ncapacity_factor = 0.0\n", 2);
  const Routing training = router->route(logits, Tensor(), batch_of(1, 4, nullptr, true), nullptr);
  CHECK(training.expert == std::vector<int32_t>{0, 0, 1, 1});
  CHECK(training.gate[3] == Approx(softmax_row(logits, 3)[1]));  // not the arg-max's probability
  CHECK(training.stats.load == std::vector<double>{0.5, 0.5});
  const Routing eval = router->route(logits, Tensor(), batch_of(1, 4, nullptr, false), nullptr);
  CHECK(eval.expert == std::vector<int32_t>{0, 0, 0, 0});
  CHECK(eval.stats.load == std::vector<double>{1.0, 0.0});

  SECTION("gate = \"sigmoid\": the same choices, gate = sigmoid(logit) of the chosen expert") {
    RouterUnderTest sigmoid("name = \"sinkhorn\"\ncapacity_factor = 0.0\ngate = \"sigmoid\"\n", 2);
    const Routing routed = sigmoid->route(logits, Tensor(), batch_of(1, 4, nullptr, true), nullptr);
    CHECK(routed.expert == std::vector<int32_t>{0, 0, 1, 1});
    CHECK(routed.gate[0] == Approx(1.0 / (1.0 + std::exp(-2.0))));
    CHECK(routed.gate[3] == Approx(0.5));  // sigmoid(0) of expert 1
    // Logits so low that every sigmoid is 0 in float32: the aux-loss statistic stays finite (its balance
    // is taken on the scores' ratios, here exp(x_j − x_max) to float precision), and so does the loss.
    Tensor low = logits.clone();
    for (int64_t i = 0; i < low.numel(); ++i) low[i] -= 120.0f;
    RouterUnderTest balanced(
        "name = \"sinkhorn\"\ncapacity_factor = 0.0\ngate = \"sigmoid\"\naux_loss_coef = 0.0\n", 2);
    const Routing underflow = balanced->route(low, Tensor(), batch_of(1, 4, nullptr, true), nullptr);
    CHECK(underflow.stats.aux_loss == 0.0);
    CHECK(std::isfinite(underflow.stats.entropy));
    CHECK(underflow.stats.mean_probability[0] == Approx((1 / (1 + std::exp(-2.0)) + 1 / (1 + std::exp(-1.5)) +
                                                         1 / (1 + std::exp(-1.0)) + 1 / (1 + std::exp(-0.5))) / 4)
                                                      .epsilon(1e-4));
  }
  SECTION("capacity still applies after balancing") {
    RouterUnderTest bounded("name = \"sinkhorn\"\ncapacity_factor = 1.0\nmin_capacity = 0\n", 2);
    const Routing dropped = bounded->route(logits, Tensor(), batch_of(1, 4, nullptr, false), nullptr);
    CHECK(dropped.expert == std::vector<int32_t>{0, 0, -1, -1});  // C = 2
  }
}

TEST_CASE("sinkhorn: backward matches finite differences of gates, aux and z losses", "[routers]") {
  RouterUnderTest router("name = \"sinkhorn\"\ncapacity_factor = 1.0\nmin_capacity = 1\naux_loss_coef = 0.3\n"
                         "z_loss_coef = 0.05\niterations = 5\n",
                         3);
  const int64_t T = 6, X = 3;
  const Tensor logits = test::random_tensor({T, X}, 81, 2.0f);
  const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
  std::unique_ptr<SavedActivations> saved;
  const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask), &saved);
  Reference reference(GateScores::softmax, T, X, 1);
  reference.chosen = reference.kept = routing.expert;  // k = 1 without normalisation: kept is enough
  reference.mask = mask;
  reference.fraction = routing.stats.load;  // f: the balanced choices, before dropping
  reference.aux = 0.3;
  reference.z = 0.05;
  reference.scale = 0.7;
  reference.weights = test::to_double(test::random_tensor({T}, 82));
  check_logit_gradient(*router.router, *saved, reference, logits, 0.7f, "sinkhorn");

  RouterUnderTest sigmoid("name = \"sinkhorn\"\ncapacity_factor = 1.0\nmin_capacity = 1\naux_loss_coef = 0.3\n"
                          "z_loss_coef = 0.05\niterations = 5\ngate = \"sigmoid\"\n",
                          3);
  std::unique_ptr<SavedActivations> sigmoid_saved;
  const Routing sigmoid_routing = sigmoid->route(logits, Tensor(), batch_of(2, 3, &mask), &sigmoid_saved);
  Reference sigmoid_reference = reference;
  sigmoid_reference.kind = GateScores::sigmoid;
  sigmoid_reference.chosen = sigmoid_reference.kept = sigmoid_routing.expert;
  sigmoid_reference.fraction = sigmoid_routing.stats.load;
  check_logit_gradient(*sigmoid.router, *sigmoid_saved, sigmoid_reference, logits, 0.7f, "sinkhorn, sigmoid gate");
}

// ---- aux_free ------------------------------------------------------------------------------------

TEST_CASE("aux_free: selection on sigmoid scores plus bias, gates from the unbiased scores", "[routers]") {
  RouterUnderTest router("name = \"aux_free\"\ncapacity_factor = 0.0\n", 3);
  Parameter& bias = router.parameters.get("router.balance_bias");
  CHECK_FALSE(bias.trainable);
  CHECK(bias.value.shape() == Shape{3});
  bias.value[0] = 0.5f;
  // token 0: s + b = (1.0, 0.73, 0.88) → experts 0, 2;  token 1: s + b = (1.0, 0.5, 0.5) → 0, 1 (tie)
  const Tensor logits = Tensor::from({2, 3}, {0, 1, 2, 0, 0, 0});
  const Routing routing = router->route(logits, Tensor(), batch_of(1, 2), nullptr);
  CHECK(routing.k == 2);
  CHECK(routing.expert == std::vector<int32_t>{0, 2, 0, 1});
  const double s0 = 0.5, s2 = 1 / (1 + std::exp(-2.0));
  CHECK(routing.gate[0] == Approx(s0 / (s0 + s2)));
  CHECK(routing.gate[1] == Approx(s2 / (s0 + s2)));
  CHECK(routing.gate[2] == Approx(0.5));
  CHECK(routing.stats.aux_loss == 0.0);  // the shared default aux_loss_coef does not apply
  CHECK(routing.stats.load == std::vector<double>{0.5, 0.25, 0.25});

  SECTION("after_step moves each bias by the rate towards balance") {
    router->after_step(routing.stats);  // expert 0 overloaded, 1 and 2 under
    CHECK(bias.value[0] == Approx(0.5 - 0.001));
    CHECK(bias.value[1] == Approx(0.001));
    CHECK(bias.value[2] == Approx(0.001));
  }
  SECTION("k = 1 without normalisation: the gate is the raw score") {
    RouterUnderTest top1("name = \"aux_free\"\ntop_k = 1\ncapacity_factor = 0.0\n", 3);
    const Routing single = top1->route(logits, Tensor(), batch_of(1, 2), nullptr);
    CHECK(single.expert == std::vector<int32_t>{2, 0});
    CHECK(single.gate[0] == Approx(s2));
  }
}

TEST_CASE("aux_free: the bias update balances an imbalanced load without an aux loss", "[routers]") {
  const int64_t T = 256, X = 4;
  // every token prefers expert 0, then 1, 2, 3, with a per-token spread; fixed logits, so only the bias
  // moves the load
  Tensor logits = test::random_tensor({T, X}, 91, 2.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < X; ++j) logits[t * X + j] += 2.0f - 1.0f * static_cast<float>(j);
  }
  RouterUnderTest router("name = \"aux_free\"\ntop_k = 1\nbias_update_rate = 0.005\ncapacity_factor = 0.0\n", X);
  std::vector<double> violation;
  for (int step = 0; step < 300; ++step) {
    const Routing routing = router->route(logits, Tensor(), batch_of(4, 64), nullptr);
    violation.push_back(max_violation(routing.stats.load));
    CHECK(routing.stats.aux_loss == 0.0);
    router->after_step(routing.stats);
  }
  double late = 0;
  for (int step = 280; step < 300; ++step) late += violation[step] / 20;
  INFO("MaxVio at step 0: " << violation.front() << ", mean over steps 280-299: " << late);
  CHECK(violation.front() > 1.5);
  CHECK(late < 0.15);  // measured: 1.625 at step 0, 0.0625 from step 40 on
}

TEST_CASE("aux_free: backward matches finite differences through sigmoid and normalisation", "[routers]") {
  // Offset −110: every sigmoid score is 0 in float32 (below −103.9), yet the gates, the balance and every
  // gradient are finite and those of the double reference (the ratios are taken in log space there).
  for (const auto& [with_aux, offset] : std::vector<std::pair<bool, float>>{{false, 0}, {true, 0}, {true, -110}}) {
    INFO("aux_loss_coef set: " << with_aux << ", logits offset by " << offset);
    RouterUnderTest router(std::string("name = \"aux_free\"\ncapacity_factor = 1.0\nmin_capacity = 1\n"
                                       "z_loss_coef = 0.05\n") +
                               (with_aux ? "aux_loss_coef = 0.3\n" : ""),
                           3);
    const int64_t T = 6, X = 3, k = 2;
    Parameter& bias = router.parameters.get("router.balance_bias");
    bias.value.copy_from(Tensor::from({3}, {0.1f, -0.2f, 0.05f}));
    Tensor logits = test::random_tensor({T, X}, 92, 2.0f);
    for (int64_t i = 0; i < T * X; ++i) logits[i] += offset;
    const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
    std::unique_ptr<SavedActivations> saved;
    const Routing routing = router->route(logits, Tensor(), batch_of(2, 3, &mask), &saved);
    CHECK((routing.stats.aux_loss > 0) == with_aux);
    CHECK(std::isfinite(routing.stats.entropy));
    for (const float gate : routing.gate) CHECK(std::isfinite(gate));
    Tensor selection = sigmoid_forward(logits);
    for (int64_t i = 0; i < T * X; ++i) selection[i] += bias.value[i % X];
    Reference reference(GateScores::sigmoid, T, X, k);
    reference.chosen = top_choices(selection, k, mask);
    reference.kept = routing.expert;
    reference.normalize = true;
    reference.mask = mask;
    reference.fraction = fraction_of(reference.chosen, X);  // all k choices (DeepSeek-V3)
    reference.aux = with_aux ? 0.3 : 0.0;
    reference.z = 0.05;
    reference.scale = 0.7;
    reference.weights = test::to_double(test::random_tensor({T * k}, 93));
    check_logit_gradient(*router.router, *saved, reference, logits, 0.7f, "aux_free");
  }
}

// ---- options -------------------------------------------------------------------------------------

TEST_CASE("every router has a description and rejects keys it does not know", "[routers]") {
  register_all();
  const std::map<std::string, std::string> known_keys{
      {"switch", ""},
      {"topk", "top_k = 2\nnormalize_gates = false\n"},
      {"noisy_topk", "top_k = 2\nnoise = \"fixed\"\nnoise_std = 0.3\nnormalize_gates = true\n"},
      {"expert_choice", ""},
      {"hash", ""},
      {"random", ""},
      {"sinkhorn", "iterations = 4\ngate = \"sigmoid\"\n"},
      {"aux_free", "top_k = 2\nnormalize_gates = true\nbias_update_rate = 0.01\n"}};
  for (const auto& [name, keys] : known_keys) {
    INFO(name);
    REQUIRE(router_registry().contains(name));
    CHECK_FALSE(router_registry().description(name).empty());
    RouterUnderTest accepted("name = \"" + name + "\"\n" + keys, 4);
    CHECK_NOTHROW(accepted.options.reject_unknown_keys());
    RouterUnderTest unknown("name = \"" + name + "\"\n" + keys + "bogus = 1\n", 4);
    CHECK_THROWS_WITH(unknown.options.reject_unknown_keys(), Contains("router.bogus") && Contains("unknown key"));
  }
}

TEST_CASE("bad router options are errors that name router.<key>", "[routers]") {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"name = \"topk\"\ntop_k = 0\n", "router.top_k"},
      {"name = \"topk\"\ntop_k = 5\n", "router.top_k: expected at most num_experts = 4"},
      {"name = \"topk\"\ntop_k = 1\nnormalize_gates = true\n", "router.normalize_gates"},
      {"name = \"noisy_topk\"\nnoise = \"gaussian\"\n", "router.noise"},
      {"name = \"noisy_topk\"\nnoise_std = 0.5\n", "router.noise_std: applies to noise = \"fixed\" only"},
      {"name = \"noisy_topk\"\nnoise = \"fixed\"\nnoise_std = -1.0\n", "router.noise_std"},
      {"name = \"sinkhorn\"\niterations = 0\n", "router.iterations"},
      {"name = \"sinkhorn\"\ngate = \"tanh\"\n", "router.gate"},
      {"name = \"aux_free\"\nbias_update_rate = -0.1\n", "router.bias_update_rate"},
      {"name = \"aux_free\"\ntop_k = \"two\"\n", "router.top_k"}};
  for (const auto& [keys, message] : cases) {
    INFO(keys);
    CHECK_THROWS_AS(RouterUnderTest(keys, 4), ConfigError);
    CHECK_THROWS_WITH(RouterUnderTest(keys, 4), Contains(message));
  }
}

// ---- in the model --------------------------------------------------------------------------------

namespace {

const char* kTinyMoe =
    "[model]\ndim = 8\ndepth = 2\norder = [\"moe\"]\nnum_experts = 4\nexpert_dim = 12\nmax_seq_len = 16\n"
    "vocab_size = 11\npositional = []\n";

struct TinyModel {
  ExperimentFile file;
  ConfigTable router_table;
  ModelConfig config;
  RouterSettings router;
  std::unique_ptr<Model> model;
  explicit TinyModel(const std::string& text)
      : file(ExperimentFile::parse(text, "test.toml")), router_table(file.table("router")) {
    config = read_model_config(file.table("model"));
    router = read_router_settings(router_table);
    model = std::make_unique<Model>(config, router, router_table);
    model->initialize(3);
  }
};

}  // namespace

TEST_CASE("every router trains in the model: forward, backward, after_step", "[routers][model]") {
  register_all();
  for (const auto& entry : router_registry().entries()) {
    INFO(entry.name);
    TinyModel tiny(std::string(kTinyMoe) + "[router]\nname = \"" + entry.name + "\"\n");
    REQUIRE_NOTHROW(tiny.router_table.reject_unknown_keys());
    ModelInput input;
    input.batch = 2;
    input.length = 6;
    for (int i = 0; i < 12; ++i) input.tokens.push_back((i * 7) % 11);
    input.mask = {1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1};
    Random random(9);
    ForwardOptions options;
    options.training = true;
    options.random = &random;
    ForwardTape tape;
    const ModelOutput output = tiny.model->forward(input, options, &tape);
    REQUIRE(output.routing.size() == 2);
    const RoutingStats& stats = output.routing[0];
    CHECK(stats.present);
    CHECK(stats.routed_tokens == 11);
    CHECK(stats.load.size() == 4);
    CHECK(stats.mean_probability.size() == 4);
    const Tensor grad_logits = test::random_tensor(output.logits.shape(), 10);
    tiny.model->parameters().zero_grad();
    tiny.model->backward(tape, &grad_logits, nullptr, 1.0f);
    double router_grad = 0;
    for (const auto& parameter : tiny.model->parameters().all()) {
      CHECK(std::isfinite(sum(parameter->grad)));
      if (parameter->name == "backbone.layers.0.mixer.router.weight") router_grad = max_abs(parameter->grad);
    }
    const bool learned = entry.name != "hash" && entry.name != "random";
    CHECK((router_grad > 0) == learned);
    tiny.model->after_step(tape);
  }
}

TEST_CASE("shared experts: named parameters, output = routed + shared on unmasked tokens", "[routers][model]") {
  TinyModel shared(std::string(kTinyMoe) + "[router]\nshared_experts = 2\ncapacity_factor = 1.0\n");
  REQUIRE_NOTHROW(shared.router_table.reject_unknown_keys());
  std::map<std::string, Shape> found;
  for (const auto& parameter : shared.model->parameters().all()) found[parameter->name] = parameter->value.shape();
  for (const std::string layer : {"0", "1"}) {
    for (const std::string j : {"0", "1"}) {
      const std::string prefix = "backbone.layers." + layer + ".mixer.shared_experts." + j + ".";
      CHECK(found[prefix + "fc1.weight"] == Shape{12, 8});
      CHECK(found[prefix + "fc1.bias"] == Shape{12});
      CHECK(found[prefix + "fc2.weight"] == Shape{8, 12});
      CHECK(found[prefix + "fc2.bias"] == Shape{8});
    }
  }
  CHECK_FALSE(found.count("backbone.layers.0.mixer.shared_experts.2.fc1.weight"));

  // The MoE block alone: the same routed part with and without shared experts.
  register_all();
  ParameterStore with_store, without_store;
  const ConfigTable with_table = shared.router_table;
  TinyModel plain(std::string(kTinyMoe) + "[router]\ncapacity_factor = 1.0\n");
  auto with = block_registry().get("moe")(BlockContext{shared.config, shared.router, with_table, with_store, "m.", 0});
  auto without = block_registry().get("moe")(
      BlockContext{plain.config, plain.router, plain.router_table, without_store, "m.", 0});
  Random random(4);
  with->initialize(random);
  for (const auto& parameter : without_store.all()) parameter->value.copy_from(with_store.get(parameter->name).value);

  const int64_t B = 2, L = 3, D = 8;
  const Tensor u = test::random_tensor({B, L, D}, 5);
  const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1};
  BatchInfo batch = batch_of(B, L, &mask, false);
  batch.keep_for_backward = true;
  LayerRecord with_record, without_record;
  const Tensor out_with = with->forward(u, batch, with_record);
  const Tensor out_without = without->forward(u, batch, without_record);
  for (int64_t t = 0; t < B * L; ++t) {
    for (int64_t d = 0; d < D; ++d) {
      // shared_s(u) = fc2(gelu(fc1(u))), in double
      double expected = 0;
      for (const std::string s : {"0", "1"}) {
        const std::string prefix = "m.shared_experts." + s + ".";
        const Tensor& w1 = with_store.get(prefix + "fc1.weight").value;
        const Tensor& b1 = with_store.get(prefix + "fc1.bias").value;
        const Tensor& w2 = with_store.get(prefix + "fc2.weight").value;
        const Tensor& b2 = with_store.get(prefix + "fc2.bias").value;
        double y = b2[d];
        for (int64_t f = 0; f < 12; ++f) {
          double h = b1[f];
          for (int64_t i = 0; i < D; ++i) h += double(w1[f * D + i]) * u[t * D + i];
          y += double(w2[d * 12 + f]) * 0.5 * h * (1 + std::erf(h / std::sqrt(2.0)));
        }
        expected += mask[t] ? y : 0.0;
      }
      CHECK(out_with[t * D + d] - out_without[t * D + d] == Approx(expected).margin(1e-5));
    }
  }

  SECTION("backward: the shared experts' gradients against finite differences") {
    const Tensor weight = test::random_tensor({B, L, D}, 6);
    with_store.zero_grad();
    const Tensor grad_u = with->backward(weight, batch, with_record, 1.0f);
    Parameter& fc1 = with_store.get("m.shared_experts.1.fc1.weight");
    for (const int64_t i : {0, 13, 50}) {
      const float original = fc1.value[i];
      auto loss = [&](float value) {
        fc1.value[i] = value;
        LayerRecord record;
        const Tensor out = with->forward(u, batch, record);
        double total = 0;
        for (int64_t e = 0; e < out.numel(); ++e) total += double(out[e]) * weight[e];
        return total;
      };
      // float32 forward: a step of 1e-2 keeps the rounding (~1e-7 / 1e-2) far below the 1e-3 tolerance
      const double finite = (loss(original + 1e-2f) - loss(original - 1e-2f)) / 2e-2;
      fc1.value[i] = original;
      CHECK(fc1.grad[i] == Approx(finite).epsilon(1e-3).margin(1e-4));
    }
    // masked tokens get no gradient through the shared experts (nor the routed ones)
    for (int64_t d = 0; d < D; ++d) CHECK(grad_u[2 * D + d] == 0.0f);
  }
}
