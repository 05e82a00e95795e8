// The one seeded random generator of a run: every weight and every random input comes from it.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

#include "kernels/tensor.h"

namespace mr1 {

class Random {
 public:
  explicit Random(uint64_t seed) : generator_(seed) {}

  double uniform(double low, double high) { return std::uniform_real_distribution<double>(low, high)(generator_); }
  double normal(double mean, double std) { return std::normal_distribution<double>(mean, std)(generator_); }
  uint64_t next() { return generator_(); }
  // An integer in [0, n).
  int64_t below(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(generator_); }

  void fill_uniform(Tensor& tensor, double low, double high) {
    for (int64_t i = 0; i < tensor.numel(); ++i) tensor[i] = static_cast<float>(uniform(low, high));
  }
  void fill_normal(Tensor& tensor, double mean, double std) {
    for (int64_t i = 0; i < tensor.numel(); ++i) tensor[i] = static_cast<float>(normal(mean, std));
  }

  std::mt19937_64& generator() { return generator_; }

 private:
  std::mt19937_64 generator_;
};

}  // namespace mr1
