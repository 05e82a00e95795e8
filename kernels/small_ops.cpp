// CPU implementations of the small ops.
#include "kernels/small_ops.h"

#include <cmath>
#include <string>

#include "kernels/dispatch.h"

namespace mr1 {

namespace {
void check_rows(const Tensor& x, int64_t rows, const char* op, const char* name) {
  if (x.rank() != 2 || x.size(0) != rows) {
    throw ShapeError(std::string(op) + ": " + name + ": expected shape (" + std::to_string(rows) + ", F), found " +
                     x.shape_string());
  }
}
}  // namespace

Tensor negative_exp(const Tensor& x) {
  if (common_device("negative_exp", {&x}) == Device::cuda) no_cuda_kernel("negative_exp");
  Tensor y(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) y[i] = -std::exp(x[i]);
  return y;
}

std::vector<float> row_dot(const Tensor& a, const Tensor& b) {
  if (common_device("row_dot", {&a, &b}) == Device::cuda) no_cuda_kernel("row_dot");
  check_rows(a, a.rank() == 2 ? a.size(0) : -1, "row_dot", "a");
  check_shape(b, a.shape(), "row_dot: b");
  const int64_t T = a.size(0), F = a.size(1);
  std::vector<float> out(static_cast<size_t>(T));
#pragma omp parallel for if (T * F > 65536)
  for (int64_t t = 0; t < T; ++t) {
    double total = 0;
    for (int64_t f = 0; f < F; ++f) total += static_cast<double>(a.data()[t * F + f]) * b.data()[t * F + f];
    out[static_cast<size_t>(t)] = static_cast<float>(total);
  }
  return out;
}

Tensor scale_rows(const Tensor& x, const std::vector<float>& scales) {
  if (common_device("scale_rows", {&x}) == Device::cuda) no_cuda_kernel("scale_rows");
  check_rows(x, static_cast<int64_t>(scales.size()), "scale_rows", "x");
  const int64_t T = x.size(0), F = x.size(1);
  Tensor y(x.shape());
#pragma omp parallel for if (T * F > 65536)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t f = 0; f < F; ++f) y.data()[t * F + f] = scales[static_cast<size_t>(t)] * x.data()[t * F + f];
  }
  return y;
}

}  // namespace mr1
