// Sampling from logits: greedy, temperature, top-k and top-p on hand-made distributions, and
// reproducibility from the seed.
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "blocks/random.h"
#include "experiments/generate.h"
#include "tests/test_util.h"

using namespace mr1;

namespace {

// Logits whose softmax is exactly `probabilities` (up to rounding): log p.
std::vector<float> logits_of(const std::vector<double>& probabilities) {
  std::vector<float> logits;
  for (double p : probabilities) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<double> distribution(const std::vector<float>& logits, const SamplingSettings& settings) {
  return sampling_distribution(logits.data(), static_cast<int64_t>(logits.size()), settings);
}

// How often each id comes out of `draws` seeded draws.
std::map<int32_t, int64_t> draw_counts(const std::vector<float>& logits, const SamplingSettings& settings,
                                       int64_t draws, uint64_t seed) {
  Random random(seed);
  std::map<int32_t, int64_t> counts;
  for (int64_t i = 0; i < draws; ++i) {
    ++counts[sample_token(logits.data(), static_cast<int64_t>(logits.size()), settings, random)];
  }
  return counts;
}

SamplingSettings with(double temperature, int64_t top_k, double top_p) {
  SamplingSettings settings;
  settings.temperature = temperature;
  settings.top_k = top_k;
  settings.top_p = top_p;
  return settings;
}

// The probabilities are computed in double from float logits log p: they match p to float rounding (~1e-7).
constexpr double kProbabilityTolerance = 1e-6;

}  // namespace

TEST_CASE("greedy takes the argmax, the lowest id on ties", "[sampling]") {
  const std::vector<float> logits{0.5f, 2.0f, -1.0f, 2.0f};
  CHECK(greedy_token(logits.data(), 4) == 1);
  SamplingSettings greedy;
  greedy.greedy = true;
  Random random(1);
  CHECK(sample_token(logits.data(), 4, greedy, random) == 1);
  CHECK(distribution(logits, greedy) == std::vector<double>{0, 1, 0, 0});
}

TEST_CASE("top_k = 2 only ever draws the two most probable ids", "[sampling]") {
  const std::vector<float> logits{0.3f, 1.2f, -0.5f, 0.9f, 0.1f, 0.8f, -2.0f, 0.0f};  // top two: ids 1 and 3
  const std::vector<double> p = distribution(logits, with(1.0, 2, 1.0));
  // Renormalised over the two: p1 / p3 = exp(1.2 − 0.9).
  CHECK(p[1] == Approx(1.0 / (1.0 + std::exp(-0.3))).margin(kProbabilityTolerance));
  CHECK(p[3] == Approx(1.0 / (1.0 + std::exp(0.3))).margin(kProbabilityTolerance));
  for (size_t v : {0, 2, 4, 5, 6, 7}) CHECK(p[v] == 0.0);
  const auto counts = draw_counts(logits, with(1.0, 2, 1.0), 5000, 7);
  CHECK(counts.size() == 2);
  CHECK(counts.count(1) == 1);
  CHECK(counts.count(3) == 1);
}

TEST_CASE("top_p keeps the fewest most probable ids that reach p", "[sampling]") {
  const std::vector<float> logits = logits_of({0.4, 0.3, 0.2, 0.1});
  SECTION("top_p = 0.5 keeps the first two, renormalised") {
    const std::vector<double> p = distribution(logits, with(1.0, 0, 0.5));
    CHECK(p[0] == Approx(0.4 / 0.7).margin(kProbabilityTolerance));
    CHECK(p[1] == Approx(0.3 / 0.7).margin(kProbabilityTolerance));
    CHECK(p[2] == 0.0);
    CHECK(p[3] == 0.0);
    const auto counts = draw_counts(logits, with(1.0, 0, 0.5), 5000, 3);
    CHECK(counts.size() == 2);
    CHECK(counts.count(0) == 1);
    CHECK(counts.count(1) == 1);
  }
  SECTION("below the first probability only the first is left; 0.75 needs three; 1 keeps all") {
    CHECK(distribution(logits, with(1.0, 0, 0.35)) == std::vector<double>{1, 0, 0, 0});
    const std::vector<double> three = distribution(logits, with(1.0, 0, 0.75));
    CHECK(three[2] == Approx(0.2 / 0.9).margin(kProbabilityTolerance));
    CHECK(three[3] == 0.0);
    const std::vector<double> all = distribution(logits, with(1.0, 0, 1.0));
    for (size_t v = 0; v < 4; ++v) CHECK(all[v] == Approx(0.4 - 0.1 * v).margin(kProbabilityTolerance));
  }
  SECTION("top_k applies first, and top_p to the renormalised top_k") {
    // top_k = 2 leaves (4/7, 3/7); top_p = 0.5 then keeps only the first (4/7 >= 0.5).
    CHECK(distribution(logits, with(1.0, 2, 0.5)) == std::vector<double>{1, 0, 0, 0});
  }
  SECTION("the order is by probability, not by id") {
    const std::vector<float> shuffled = logits_of({0.1, 0.3, 0.2, 0.4});
    const std::vector<double> p = distribution(shuffled, with(1.0, 0, 0.5));
    CHECK(p[0] == 0.0);
    CHECK(p[2] == 0.0);
    CHECK(p[3] == Approx(0.4 / 0.7).margin(kProbabilityTolerance));
  }
}

TEST_CASE("temperature scales the logits; towards 0 it is greedy", "[sampling]") {
  const std::vector<float> logits{1.0f, 3.0f, 2.0f, 2.9f};
  // T = 2: p ∝ exp(logit / 2)
  const std::vector<double> p = distribution(logits, with(2.0, 0, 1.0));
  double total = 0;
  for (float logit : logits) total += std::exp(logit / 2.0);
  for (size_t v = 0; v < 4; ++v) CHECK(p[v] == Approx(std::exp(logits[v] / 2.0) / total).margin(kProbabilityTolerance));
  // T = 1e-3: the gap 0.1 to the runner-up becomes 100 in the exponent, exp(−100) of the mass.
  const auto counts = draw_counts(logits, with(1e-3, 0, 1.0), 2000, 11);
  CHECK(counts == std::map<int32_t, int64_t>{{1, 2000}});
  CHECK(distribution(logits, with(0.0, 0, 1.0)) == std::vector<double>{0, 1, 0, 0});  // T = 0 is greedy
}

TEST_CASE("draws follow the distribution and repeat with the seed", "[sampling]") {
  const std::vector<float> logits = logits_of({0.4, 0.3, 0.2, 0.1});
  const int64_t draws = 20000;
  const auto counts = draw_counts(logits, with(1.0, 0, 1.0), draws, 5);
  for (int32_t v = 0; v < 4; ++v) {
    // Binomial standard deviation sqrt(p (1 − p) / n) <= 0.0035 here: 0.015 is over four of them.
    CHECK(double(counts.at(v)) / draws == Approx(0.4 - 0.1 * v).margin(0.015));
  }
  auto sequence = [&](uint64_t seed) {
    Random random(seed);
    std::vector<int32_t> tokens;
    for (int i = 0; i < 200; ++i) tokens.push_back(sample_token(logits.data(), 4, with(0.8, 3, 0.9), random));
    return tokens;
  };
  CHECK(sequence(42) == sequence(42));
  CHECK(sequence(42) != sequence(43));
}

TEST_CASE("sampling settings out of range are refused", "[sampling]") {
  const std::vector<float> logits{0.0f, 1.0f};
  CHECK_THROWS_AS(distribution(logits, with(-1.0, 0, 1.0)), std::invalid_argument);
  CHECK_THROWS_AS(distribution(logits, with(1.0, -1, 1.0)), std::invalid_argument);
  CHECK_THROWS_AS(distribution(logits, with(1.0, 0, 0.0)), std::invalid_argument);
  CHECK_THROWS_AS(distribution(logits, with(1.0, 0, 1.5)), std::invalid_argument);
  CHECK_THROWS_AS(distribution(logits, with(NAN, 0, 1.0)), std::invalid_argument);
}
