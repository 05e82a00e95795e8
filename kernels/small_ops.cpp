// CPU implementations of the small ops.
#include "kernels/small_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/small_ops_cuda.h"

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
  if (common_device("negative_exp", {&x}) == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda);
    negative_exp_cuda(x.data(), y.data(), x.numel(), cuda::stream());
    return y;
  }
  Tensor y = Tensor::empty(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) y[i] = -std::min(std::exp(x[i]), std::numeric_limits<float>::max());
  return y;
}

std::vector<float> row_dot(const Tensor& a, const Tensor& b) {
  const Device device = common_device("row_dot", {&a, &b});
  check_rows(a, a.rank() == 2 ? a.size(0) : -1, "row_dot", "a");
  check_shape(b, a.shape(), "row_dot: b");
  const int64_t T = a.size(0), F = a.size(1);
  if (device == Device::cuda) {
    cuda::DeviceBuffer out(static_cast<size_t>(T) * sizeof(float));
    row_dot_cuda(a.data(), b.data(), out.as<float>(), T, F, cuda::stream());
    return cuda::download<float>(out, static_cast<size_t>(T));
  }
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
  const Device device = common_device("scale_rows", {&x});
  check_rows(x, static_cast<int64_t>(scales.size()), "scale_rows", "x");
  const int64_t T = x.size(0), F = x.size(1);
  if (device == Device::cuda) {
    Tensor y = Tensor::empty(x.shape(), Device::cuda);
    const cuda::DeviceBuffer device_scales = cuda::upload(scales);
    scale_rows_cuda(x.data(), device_scales.as<float>(), y.data(), T, F, cuda::stream());
    return y;
  }
  Tensor y = Tensor::empty(x.shape());
#pragma omp parallel for if (T * F > 65536)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t f = 0; f < F; ++f) y.data()[t * F + f] = scales[static_cast<size_t>(t)] * x.data()[t * F + f];
  }
  return y;
}

}  // namespace mr1
