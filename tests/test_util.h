// Helpers shared by the tests: seeded random tensors, double-precision comparisons and
// central finite differences.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace mr1::test {

// Uniform values in [−scale, scale) from a fixed seed.
inline Tensor random_tensor(Shape shape, uint64_t seed, float scale = 1.0f) {
  Tensor tensor(std::move(shape));
  std::mt19937_64 generator(seed);
  std::uniform_real_distribution<float> uniform(-scale, scale);
  for (int64_t i = 0; i < tensor.numel(); ++i) tensor[i] = uniform(generator);
  return tensor;
}

inline std::vector<double> to_double(const Tensor& tensor) {
  const std::vector<float> values = tensor.to_vector();
  return std::vector<double>(values.begin(), values.end());
}

// Every element within abs_tol + rel_tol·|expected|; on failure names the first bad index and the worst error.
inline void require_close(const Tensor& actual, const std::vector<double>& expected, double abs_tol, double rel_tol,
                          const std::string& what) {
  INFO(what);
  REQUIRE(actual.numel() == static_cast<int64_t>(expected.size()));
  const std::vector<float> values = actual.to_vector();
  double worst = 0;
  int64_t first_bad = -1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double error = std::abs(double(values[i]) - expected[i]);
    worst = std::max(worst, error);
    if (!(error <= abs_tol + rel_tol * std::abs(expected[i])) && first_bad < 0) first_bad = static_cast<int64_t>(i);
  }
  if (first_bad >= 0) {
    std::ostringstream message;
    message << what << ": element " << first_bad << " is " << values[first_bad] << ", expected "
            << expected[first_bad] << " (max abs error " << worst << ")";
    FAIL(message.str());
  }
}

inline void require_close(const Tensor& actual, const Tensor& expected, double abs_tol, double rel_tol,
                          const std::string& what) {
  require_close(actual, to_double(expected), abs_tol, rel_tol, what);
}

// Central finite differences of a scalar function of many variables, in double precision:
// g[i] = (f(x + eps e_i) − f(x − eps e_i)) / (2 eps).
inline std::vector<double> finite_difference(const std::function<double(const std::vector<double>&)>& f,
                                             std::vector<double> x, double eps = 1e-6) {
  std::vector<double> gradient(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double plus = f(x);
    x[i] = saved - eps;
    const double minus = f(x);
    x[i] = saved;
    gradient[i] = (plus - minus) / (2 * eps);
  }
  return gradient;
}

// Σ_i weights[i] · values[i]: the scalar loss through which tests pull a gradient out of an op.
inline double weighted_sum(const std::vector<double>& values, const std::vector<double>& weights) {
  double total = 0;
  for (size_t i = 0; i < values.size(); ++i) total += values[i] * weights[i];
  return total;
}

// Each call must throw ShapeError whose message names its argument ("linear_forward: x").
inline void require_shape_errors(const std::vector<std::pair<const char*, std::function<void()>>>& calls) {
  for (const auto& [argument, call] : calls) {
    INFO(argument);
    CHECK_THROWS_AS(call(), ShapeError);
    CHECK_THROWS_WITH(call(), Catch::Contains(argument));
  }
}

// The message of the Exception that `call` throws, or a note that it threw none.
template <typename Exception>
std::string thrown_message(const std::function<void()>& call) {
  try {
    call();
  } catch (const Exception& error) {
    return error.what();
  }
  return "(nothing of the expected type thrown)";
}

}  // namespace mr1::test
