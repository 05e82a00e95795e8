// Cross-entropy: a hand-worked case with a tie and an unscored position, a double loop on random logits, the
// gradient against central finite differences of that loop, and the errors for bad shapes and targets.
#include "kernels/cross_entropy.h"

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

// Logit shapes (..., V): one position, one class, odd sizes, leading axes, and one above the threading
// threshold (16384 values), which is left out of the finite differences.
const Shape kShapes[] = {{1, 5}, {4, 1}, {7, 3}, {2, 3, 11}, {128, 257}};

struct CrossEntropyReference {
  double loss = 0;
  int64_t scored = 0, correct = 0;
};

// Mean over scored t of log Σ_j exp(x[t, j]) − x[t, target[t]], and the argmax (lowest index on ties) count, in double.
CrossEntropyReference cross_entropy_reference(const std::vector<double>& logits, const std::vector<int32_t>& targets) {
  const size_t classes = logits.size() / targets.size();
  CrossEntropyReference result;
  double total = 0;
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] < 0) continue;
    const double* row = logits.data() + t * classes;
    double exp_total = 0;
    size_t best = 0;
    for (size_t j = 0; j < classes; ++j) {
      exp_total += std::exp(row[j]);
      if (row[j] > row[best]) best = j;
    }
    total += std::log(exp_total) - row[targets[t]];
    result.scored += 1;
    result.correct += best == static_cast<size_t>(targets[t]);
  }
  result.loss = result.scored > 0 ? total / result.scored : 0;
  return result;
}

// Targets uniform in [0, V), every third one −1 (not scored).
std::vector<int32_t> random_targets(size_t count, int64_t classes, uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::uniform_int_distribution<int32_t> uniform(0, static_cast<int32_t>(classes - 1));
  std::vector<int32_t> targets(count);
  for (size_t t = 0; t < count; ++t) targets[t] = t % 3 == 2 ? -1 : uniform(generator);
  return targets;
}

TEST_CASE("cross_entropy: a hand-worked case with a tie and an unscored position") {
  // Row 0: [0, ln 3], target 1: softmax [0.25, 0.75], loss −ln 0.75 = 0.2876820725, argmax 1 (correct).
  // Row 1: [5, 5], target 0: softmax [0.5, 0.5], loss ln 2 = 0.6931471806, argmax 0 by the tie rule (correct).
  // Row 2: target −1, not scored.  Mean over the 2 scored rows: 0.4904146265.
  // grad = (softmax − onehot)/2: row 0 [0.125, −0.125], row 1 [−0.25, 0.25], row 2 [0, 0].
  const Tensor logits = Tensor::from({3, 2}, {0, std::log(3.0f), 5, 5, 1, 2});
  const CrossEntropyResult result = cross_entropy(logits, {1, 0, -1}, true);
  CHECK(result.scored == 2);
  CHECK(result.correct == 2);
  CHECK(result.loss == Approx(0.4904146265).margin(1e-7));  // ln 3 rounded to float32: 2.4e-8 relative
  CHECK(result.grad_logits.shape() == logits.shape());
  require_close(result.grad_logits, {0.125, -0.125, -0.25, 0.25, 0, 0}, 1e-7, 0, "grad");  // same rounding of ln 3
  // With target 1 on the tied row, argmax 0 is not the target.
  CHECK(cross_entropy(logits, {1, 1, -1}, false).correct == 1);
}

TEST_CASE("cross_entropy: gradient only when asked for; nothing scored gives zero loss") {
  const Tensor logits = random_tensor({4, 3}, 1);
  CHECK_FALSE(cross_entropy(logits, {0, 1, 2, 0}, false).grad_logits.defined());
  const CrossEntropyResult none = cross_entropy(logits, {-1, -1, -1, -1}, true);
  CHECK(none.scored == 0);
  CHECK(none.correct == 0);
  CHECK(none.loss == 0);
  require_close(none.grad_logits, std::vector<double>(12, 0.0), 0, 0, "grad with nothing scored");
}

TEST_CASE("cross_entropy: loss and counts match a double loop; gradient matches finite differences") {
  uint64_t seed = 700;
  for (const Shape& shape : kShapes) {
    INFO("logits " << shape_string(shape));
    const Tensor logits = random_tensor(shape, ++seed, 3.0f);
    const std::vector<int32_t> targets = random_targets(logits.numel() / shape.back(), shape.back(), ++seed);
    const std::vector<double> values = to_double(logits);
    const CrossEntropyResult result = cross_entropy(logits, targets, true);
    const CrossEntropyReference expected = cross_entropy_reference(values, targets);
    CHECK(result.scored == expected.scored);
    CHECK(result.correct == expected.correct);
    // Both in double from the same float32 logits; they differ only in the order of sums (~1e-15 relative), and
    // with V = 1 the reference's log(exp(x)) − x is 0 up to double rounding of x (1e-15 absolute).
    CHECK(result.loss == Approx(expected.loss).epsilon(1e-12).margin(1e-14));
    if (logits.numel() > 1000) continue;  // finite differences cost numel² evaluations
    // Gradient computed in double and rounded to float32 (6e-8 of values below 1), against double differences
    // (error ~1e-9).
    const auto loss = [&](const std::vector<double>& v) { return cross_entropy_reference(v, targets).loss; };
    require_close(result.grad_logits, finite_difference(loss, values), 1e-7, 0, "grad");
  }
}

TEST_CASE("cross_entropy rejects wrong shapes and targets, naming them") {
  const Tensor logits({3, 4});
  CHECK_THROWS_AS(cross_entropy(logits, {0, 1}, false), ShapeError);
  CHECK_THROWS_WITH(cross_entropy(logits, {0, 1}, false), Catch::Contains("cross_entropy: targets"));
  CHECK_THROWS_WITH(cross_entropy(Tensor(Shape{}), {0}, false), Catch::Contains("cross_entropy: logits"));
  CHECK_THAT(thrown_message<std::out_of_range>([&] {
               cross_entropy(logits, {0, 4, 1}, true);
             }),
             Catch::Contains("target 4 at position 1") && Catch::Contains("[0, 4)"));
  CHECK_THAT(thrown_message<std::out_of_range>([&] {
               cross_entropy(logits, {0, 1, -2}, true);
             }),
             Catch::Contains("target -2 at position 2"));
}

}  // namespace
}  // namespace mr1::test
