// Elementwise and layout helpers: hand-worked cases, double-precision loops on random inputs (one of them large
// enough for the threaded path), and the shape errors.
#include "kernels/elementwise.h"

#include <cmath>
#include <functional>
#include <string>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

// Shapes of the random checks: one value, odd sizes, three axes, and one above the threading threshold (16384).
const Shape kShapes[] = {{1, 1}, {3, 7}, {2, 3, 5}, {129, 131}};

// out[i] = f(a[i], b[i]) in double.
std::vector<double> combine_reference(const Tensor& a, const Tensor& b,
                                      const std::function<double(double, double)>& f) {
  const std::vector<double> u = to_double(a), v = to_double(b);
  std::vector<double> out(u.size());
  for (size_t i = 0; i < u.size(); ++i) out[i] = f(u[i], v[i]);
  return out;
}

// x[:, begin:end] of x viewed as (T, F), in double.
std::vector<double> columns_reference(const Tensor& x, int64_t begin, int64_t end) {
  const std::vector<double> values = to_double(x);
  const int64_t features = x.size(-1);
  std::vector<double> out;
  for (int64_t t = 0; t < x.numel() / features; ++t) {
    for (int64_t j = begin; j < end; ++j) out.push_back(values[t * features + j]);
  }
  return out;
}

TEST_CASE("elementwise: add, multiply, scale and the in-place sums, by hand") {
  const Tensor a = Tensor::from({3}, {1, 2, 3});
  const Tensor b = Tensor::from({3}, {10, 20, 30});
  // All results are small integers or halves: exact in float32.
  require_close(add(a, b), {11, 22, 33}, 0, 0, "a + b");
  require_close(multiply(a, b), {10, 40, 90}, 0, 0, "a ⊙ b");
  require_close(scale(a, 0.5f), {0.5, 1, 1.5}, 0, 0, "0.5 a");
  Tensor sum_in_place = a.clone();
  add_inplace(sum_in_place, b);
  require_close(sum_in_place, {11, 22, 33}, 0, 0, "a += b");
  Tensor scaled_in_place = a.clone();
  add_scaled_inplace(scaled_in_place, b, -2);  // [1 − 20, 2 − 40, 3 − 60]
  require_close(scaled_in_place, {-19, -38, -57}, 0, 0, "a += −2 b");
}

TEST_CASE("elementwise: binary ops match double loops") {
  uint64_t seed = 20;
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor a = random_tensor(shape, ++seed), b = random_tensor(shape, ++seed);
    // One float32 operation on values of size <= 1: half an ulp, below 1.2e-7 relative.
    const double rounding = 1.2e-7;
    require_close(add(a, b), combine_reference(a, b, std::plus<double>()), 0, rounding, "add");
    require_close(multiply(a, b), combine_reference(a, b, std::multiplies<double>()), 0, rounding, "multiply");
    require_close(scale(a, 3.0f), combine_reference(a, a, [](double u, double) { return 3 * u; }), 0, rounding,
                  "scale");
    Tensor accumulated = a.clone();
    add_scaled_inplace(accumulated, b, 0.25f);
    // Two float32 operations (product, sum), each rounded: 1e-7 absolute on values of size <= 1.25.
    require_close(accumulated, combine_reference(a, b, [](double u, double v) { return u + 0.25 * v; }), 1e-7, rounding,
                  "add_scaled_inplace");
  }
}

TEST_CASE("elementwise: split_last, columns and concat_last, by hand") {
  // x = [[1, 2, 3], [4, 5, 6]]: split at 1 gives [[1], [4]] and [[2, 3], [5, 6]]. Copies are exact.
  const Tensor x = Tensor::from({2, 3}, {1, 2, 3, 4, 5, 6});
  const auto [left, right] = split_last(x, 1);
  CHECK(left.shape() == Shape{2, 1});
  CHECK(right.shape() == Shape{2, 2});
  require_close(left, {1, 4}, 0, 0, "left");
  require_close(right, {2, 3, 5, 6}, 0, 0, "right");
  require_close(columns(x, 1, 2), {2, 5}, 0, 0, "columns [1, 2)");
  require_close(concat_last(right, left), {2, 3, 1, 5, 6, 4}, 0, 0, "[right, left]");
  require_close(concat_last(right, left, x), {2, 3, 1, 1, 2, 3, 5, 6, 4, 4, 5, 6}, 0, 0, "[right, left, x]");
  // The edges: an empty side is allowed.
  CHECK(split_last(x, 0).first.shape() == Shape{2, 0});
  CHECK(split_last(x, 3).second.shape() == Shape{2, 0});
  CHECK(columns(x, 2, 2).numel() == 0);
}

TEST_CASE("elementwise: columns and concat_last match double loops and invert each other") {
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, 31);
    const int64_t features = shape.back();
    const int64_t at = features / 2;
    // Copies are exact.
    require_close(columns(x, at, features), columns_reference(x, at, features), 0, 0, "columns");
    const auto [left, right] = split_last(x, at);
    require_close(left, columns_reference(x, 0, at), 0, 0, "split_last left");
    const Tensor joined = concat_last(left, right);
    CHECK(joined.shape() == x.shape());
    require_close(joined, x, 0, 0, "concat_last(split_last(x))");
  }
}

TEST_CASE("elementwise: gather_rows and scatter_add_rows, by hand") {
  // x = [[1, 2], [3, 4], [5, 6]]; rows [2, 0, 2] gather [[5, 6], [1, 2], [5, 6]].
  const Tensor x = Tensor::from({3, 2}, {1, 2, 3, 4, 5, 6});
  const std::vector<int64_t> rows = {2, 0, 2};
  const Tensor gathered = gather_rows(x, rows);
  require_close(gathered, {5, 6, 1, 2, 5, 6}, 0, 0, "gather");  // exact copies
  // Scatter back with scales [0.5, 2, 1]: out[2] += 0.5·[5, 6] + 1·[5, 6] = [7.5, 9]; out[0] += 2·[1, 2]; row 1
  // untouched.
  Tensor out = Tensor::full({3, 2}, 1);
  const std::vector<float> scales = {0.5f, 2, 1};
  scatter_add_rows(out, gathered, rows, &scales);
  require_close(out, {3, 5, 1, 1, 8.5, 10}, 0, 0, "scatter-add with scales");  // exact: halves and integers
  Tensor unscaled = Tensor::zeros({3, 2});
  scatter_add_rows(unscaled, gathered, rows, nullptr);
  require_close(unscaled, {1, 2, 0, 0, 10, 12}, 0, 0, "scatter-add without scales");
}

TEST_CASE("elementwise: gather_rows and scatter_add_rows reject rows out of range") {
  const Tensor x({3, 2});
  CHECK_THROWS_AS(gather_rows(x, {0, 3}), std::out_of_range);
  CHECK_THROWS_WITH(gather_rows(x, {0, 3}), Catch::Contains("rows[1] = 3") && Catch::Contains("[0, 3)"));
  Tensor out({2, 2});
  CHECK_THROWS_AS(scatter_add_rows(out, Tensor({1, 2}), {-1}, nullptr), std::out_of_range);
}

TEST_CASE("elementwise: zero_masked_rows zeroes exactly the masked tokens") {
  // x (2, 2, 3) of ones; mask [1, 0, 0, 1] zeroes tokens (b 0, l 1) and (b 1, l 0).
  Tensor x = Tensor::full({2, 2, 3}, 1);
  zero_masked_rows(x, {1, 0, 0, 1});
  require_close(x, {1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1}, 0, 0, "masked");
  // Above the threading threshold: 2·100 tokens of 97 features, every third one masked.
  Tensor large = random_tensor({2, 100, 97}, 3);
  std::vector<uint8_t> mask(200);
  std::vector<double> expected = to_double(large);
  for (size_t t = 0; t < mask.size(); ++t) {
    mask[t] = t % 3 != 0;
    if (!mask[t]) std::fill(expected.begin() + t * 97, expected.begin() + (t + 1) * 97, 0.0);
  }
  zero_masked_rows(large, mask);
  require_close(large, expected, 0, 0, "large");
  // A masked token is seen wherever it is, the last one too; a mask that keeps every token changes nothing.
  CHECK_FALSE(RowMask(mask).keeps_all());
  std::vector<uint8_t> only_last_masked(200, 1);
  only_last_masked.back() = 0;
  CHECK_FALSE(RowMask(only_last_masked).keeps_all());
  const std::vector<uint8_t> ones(200, 1);
  const RowMask keep_all(ones);
  CHECK(keep_all.keeps_all());
  Tensor kept = random_tensor({2, 100, 97}, 4);
  const std::vector<double> before = to_double(kept);
  zero_masked_rows(kept, keep_all);
  require_close(kept, before, 0, 0, "all kept");
}

TEST_CASE("elementwise: sum, mean, standard_deviation and max_abs, by hand") {
  // [1, 2, 3, 4]: sum 10, mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3, std √(5/3) = 1.2909944487
  const Tensor x = Tensor::from({2, 2}, {1, 2, 3, 4});
  CHECK(sum(x) == 10);
  CHECK(mean(x) == 2.5);
  CHECK(standard_deviation(x) == Approx(std::sqrt(5.0 / 3.0)).epsilon(1e-15));  // double arithmetic
  CHECK(max_abs(Tensor::from({3}, {-3, 2, 0.5f})) == 3);
  CHECK(std::isnan(standard_deviation(Tensor::from({1}, {7}))));  // n − 1 = 0, as torch.std
  CHECK(std::isnan(max_abs(Tensor::from({2}, {1, NAN}))));        // a NaN is never hidden
}

TEST_CASE("elementwise: reductions match double loops") {
  for (const Shape& shape : kShapes) {
    INFO("shape " << shape_string(shape));
    const Tensor x = random_tensor(shape, 41, 2.0f);
    const std::vector<double> values = to_double(x);
    double total = 0, largest = 0;
    for (double v : values) total += v, largest = std::max(largest, std::abs(v));
    const double average = total / values.size();
    double squares = 0;
    for (double v : values) squares += (v - average) * (v - average);
    // Double sums over at most 16899 values of size <= 2 in another order: 1e-10 absolute is margin.
    CHECK(sum(x) == Approx(total).margin(1e-10));
    CHECK(mean(x) == Approx(average).margin(1e-12));
    if (values.size() > 1)
      CHECK(standard_deviation(x) == Approx(std::sqrt(squares / (values.size() - 1))).epsilon(1e-12));
    CHECK(max_abs(x) == largest);  // exact: a selection, no arithmetic
  }
}

TEST_CASE("elementwise rejects wrong shapes, naming the argument") {
  Tensor a({2, 3});
  const Tensor b({3, 2}), x({2, 3}), rows({3, 2});
  const std::vector<float> two_scales = {1, 2};
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"add: b", [&] { add(a, b); }},
      {"multiply: b", [&] { multiply(a, b); }},
      {"add_inplace: b", [&] { add_inplace(a, b); }},
      {"add_scaled_inplace: b", [&] { add_scaled_inplace(a, b, 2); }},
      {"split_last: columns [4, 4)", [&] { split_last(x, 4); }},
      {"columns: columns [2, 1)", [&] { columns(x, 2, 1); }},
      {"concat_last: b",
       [&] {
         concat_last(x, Tensor({3, 3}));
       }},
      {"concat_last: c", [&] { concat_last(x, x, Tensor({3, 3})); }},
      {"gather_rows: x", [&] { gather_rows(Tensor({6}), {0}); }},
      {"scatter_add_rows: x",
       [&] {
         scatter_add_rows(a, Tensor({1, 2}), {0}, nullptr);
       }},
      {"scatter_add_rows: scale",
       [&] {
         Tensor out({2, 2});
         scatter_add_rows(out, rows, {0, 1, 1}, &two_scales);
       }},
      {"zero_masked_rows: mask",
       [&] {
         zero_masked_rows(a, {1, 1, 1});
       }},
      {"zero_masked_rows: x",
       [&] {
         Tensor flat({4});
         zero_masked_rows(flat, {1, 1, 1, 1});
       }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
