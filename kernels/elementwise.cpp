// Elementwise and layout helpers on the CPU: plain loops over the flat values, Eigen blocks for columns.
// Shape letters: T rows (all leading axes flattened), F features (the last axis).
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/elementwise_cuda.h"

namespace mr1 {

namespace {

// Throws unless b has a's shape and both are on one device, which it returns. `op` names the caller.
Device check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  check_shape(b, a.shape(), std::string(op) + ": b");
  return common_device(op, {&a, &b});
}

bool on_cuda(const char* op, const Tensor& x) { return common_device(op, {&x}) == Device::cuda; }

// out[i] = combine(a[i], b[i]) over `count` values; out may be a.
template <typename Combine>
void combine_values(float* out, const float* a, const float* b, int64_t count, Combine combine) {
#pragma omp parallel for if (count >= kParallelMinimumWork)
  for (int64_t i = 0; i < count; ++i) out[i] = combine(a[i], b[i]);
}

// destination[:, destination_begin + j] = source[:, source_begin + j] for j < width; both have T rows
// and live on one device.
void copy_columns(const Tensor& source, int64_t source_begin, Tensor& destination, int64_t destination_begin,
                  int64_t width) {
  if (destination.device() == Device::cuda) {
    copy_columns_cuda(source.data(), source.size(-1), source_begin, destination.data(), destination.size(-1),
                      destination_begin, width, row_count(destination), cuda::stream());
    return;
  }
  matrix_of_rows(destination).middleCols(destination_begin, width) =
      matrix_of_rows(source).middleCols(source_begin, width);
}

// Throws ShapeError unless 0 <= begin <= end <= F.
void check_column_range(const char* op, const Tensor& x, int64_t begin, int64_t end) {
  check_last_axis(x, -1, std::string(op) + ": x");
  if (begin < 0 || end < begin || end > x.size(-1)) {
    throw ShapeError(std::string(op) + ": columns [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") outside the last axis of x, shape " + x.shape_string());
  }
}

}  // namespace

// a += b
void add_inplace(Tensor& a, const Tensor& b) {
  if (check_same_shape("add_inplace", a, b) == Device::cuda) {
    return add_scaled_cuda(a.data(), a.data(), b.data(), 1.0f, a.numel(), cuda::stream());
  }
  combine_values(a.data(), a.data(), b.data(), a.numel(), [](float u, float v) { return u + v; });
}

// a += scale · b
void add_scaled_inplace(Tensor& a, const Tensor& b, float scale) {
  if (check_same_shape("add_scaled_inplace", a, b) == Device::cuda) {
    return add_scaled_cuda(a.data(), a.data(), b.data(), scale, a.numel(), cuda::stream());
  }
  combine_values(a.data(), a.data(), b.data(), a.numel(), [scale](float u, float v) { return u + scale * v; });
}

// out = a + b
Tensor add(const Tensor& a, const Tensor& b) {
  const Device device = check_same_shape("add", a, b);
  Tensor out = Tensor::empty(a.shape(), device);
  if (device == Device::cuda) {
    add_scaled_cuda(out.data(), a.data(), b.data(), 1.0f, a.numel(), cuda::stream());
    return out;
  }
  combine_values(out.data(), a.data(), b.data(), a.numel(), [](float u, float v) { return u + v; });
  return out;
}

// out = a ⊙ b
Tensor multiply(const Tensor& a, const Tensor& b) {
  const Device device = check_same_shape("multiply", a, b);
  Tensor out = Tensor::empty(a.shape(), device);
  if (device == Device::cuda) {
    multiply_cuda(out.data(), a.data(), b.data(), a.numel(), cuda::stream());
    return out;
  }
  combine_values(out.data(), a.data(), b.data(), a.numel(), [](float u, float v) { return u * v; });
  return out;
}

// out = factor · a
Tensor scale(const Tensor& a, float factor) {
  Tensor out = Tensor::empty(a.shape(), a.device());
  if (on_cuda("scale", a)) {
    scale_cuda(out.data(), a.data(), factor, a.numel(), cuda::stream());
    return out;
  }
  combine_values(out.data(), a.data(), a.data(), a.numel(), [factor](float u, float) { return factor * u; });
  return out;
}

// x (..., F) → x[..., :at] (..., at) and x[..., at:] (..., F − at)
std::pair<Tensor, Tensor> split_last(const Tensor& x, int64_t at) {
  check_column_range("split_last", x, at, at);
  const int64_t features = x.size(-1);
  Tensor left = Tensor::empty(with_last_axis(x.shape(), at), x.device());
  Tensor right = Tensor::empty(with_last_axis(x.shape(), features - at), x.device());
  copy_columns(x, 0, left, 0, at);
  copy_columns(x, at, right, 0, features - at);
  return {left, right};
}

// x (..., F) → x[..., begin:end] (..., end − begin)
Tensor columns(const Tensor& x, int64_t begin, int64_t end) {
  check_column_range("columns", x, begin, end);
  Tensor out = Tensor::empty(with_last_axis(x.shape(), end - begin), x.device());
  copy_columns(x, begin, out, 0, end - begin);
  return out;
}

namespace {

// a (..., Fa), b (..., Fb), ... → [a, b, ...] (..., Fa + Fb + ...); the parts are named a, b, ... in errors.
Tensor concat_parts(std::initializer_list<const Tensor*> parts) {
  const Tensor& first = **parts.begin();
  check_last_axis(first, -1, "concat_last: a");
  int64_t features = 0;
  char name = 'a';
  for (const Tensor* part : parts) {
    check_shape(*part, with_last_axis(first.shape(), -1), std::string("concat_last: ") + name++);
    features += part->size(-1);
  }
  const Device device = common_device("concat_last", parts);
  Tensor out = Tensor::empty(with_last_axis(first.shape(), features), device);
  int64_t at = 0;
  for (const Tensor* part : parts) {
    copy_columns(*part, 0, out, at, part->size(-1));
    at += part->size(-1);
  }
  return out;
}

}  // namespace

Tensor concat_last(const Tensor& a, const Tensor& b) { return concat_parts({&a, &b}); }

Tensor concat_last(const Tensor& a, const Tensor& b, const Tensor& c) { return concat_parts({&a, &b, &c}); }

namespace {

// Throws std::out_of_range naming the first entry of `rows` outside [0, T).
void check_row_indices(const char* op, const std::vector<int64_t>& rows, int64_t row_count) {
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= row_count) {
      throw std::out_of_range(std::string(op) + ": rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                              " outside [0, " + std::to_string(row_count) + ")");
    }
  }
}

}  // namespace

// out[i] = x[rows[i]]     x (T, F), out (rows.size(), F)
Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  check_shape(x, {-1, -1}, "gather_rows: x");
  check_row_indices("gather_rows", rows, x.size(0));
  const int64_t count = static_cast<int64_t>(rows.size());
  Tensor out = Tensor::empty({count, x.size(1)}, x.device());
  if (on_cuda("gather_rows", x)) {
    const cuda::DeviceBuffer device_rows = cuda::upload(rows);
    gather_rows_cuda(x.data(), device_rows.as<int64_t>(), out.data(), count, x.size(1), cuda::stream());
    return out;
  }
  const ConstMatrixMap source = matrix_of_rows(x);
  MatrixMap destination = matrix_of_rows(out);
#pragma omp parallel for if (out.numel() >= kParallelMinimumWork)
  for (int64_t i = 0; i < count; ++i) destination.row(i) = source.row(rows[i]);
  return out;
}

// out[rows[i]] += scale[i] · x[i]   (scale 1 when null)     out (T, F), x (rows.size(), F)
// Serial: rows may repeat, and a fixed order keeps the sums reproducible.
void scatter_add_rows(Tensor& out, const Tensor& x, const std::vector<int64_t>& rows, const std::vector<float>* scale) {
  check_shape(out, {-1, -1}, "scatter_add_rows: out");
  check_shape(x, {static_cast<int64_t>(rows.size()), out.size(1)}, "scatter_add_rows: x");
  if (scale && scale->size() != rows.size()) {
    throw ShapeError("scatter_add_rows: scale: expected " + std::to_string(rows.size()) +
                     " values (one per row), found " + std::to_string(scale->size()));
  }
  check_row_indices("scatter_add_rows", rows, out.size(0));
  if (common_device("scatter_add_rows", {&out, &x}) == Device::cuda) {
    scatter_add_rows_by_destination_cuda(out.data(), x.data(), rows, out.size(0), scale, out.size(1), cuda::stream());
    return;
  }
  const ConstMatrixMap source = matrix_of_rows(x);
  MatrixMap destination = matrix_of_rows(out);
  for (size_t i = 0; i < rows.size(); ++i) {
    const float factor = scale ? (*scale)[i] : 1.0f;
    destination.row(rows[i]) += factor * source.row(static_cast<int64_t>(i));
  }
}

RowMask::RowMask(const std::vector<uint8_t>& values)
    : values_(values), keeps_all_(std::find(values.begin(), values.end(), 0) == values.end()) {}

const uint8_t* RowMask::device() const {
  if (!device_.as<void>() && !values_.empty()) device_ = cuda::upload(values_);
  return device_.as<uint8_t>();
}

// x[b, l, ...] = 0 where mask[b·L + l] == 0     x (B, L, ...), mask (B·L)
void zero_masked_rows(Tensor& x, const RowMask& row_mask) {
  const std::vector<uint8_t>& mask = row_mask.values();
  if (x.rank() < 2) throw ShapeError("zero_masked_rows: x: expected shape (B, L, ...), found " + x.shape_string());
  const int64_t tokens = x.size(0) * x.size(1);
  if (static_cast<int64_t>(mask.size()) != tokens) {
    throw ShapeError("zero_masked_rows: mask: expected B*L = " + std::to_string(tokens) + " entries for x of shape " +
                     x.shape_string() + ", found " + std::to_string(mask.size()));
  }
  if (row_mask.keeps_all()) return;
  const int64_t row_size = tokens == 0 ? 0 : x.numel() / tokens;
  if (on_cuda("zero_masked_rows", x)) {
    return zero_masked_rows_cuda(x.data(), row_mask.device(), tokens, row_size, cuda::stream());
  }
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < tokens; ++t) {
    if (mask[t] == 0) std::fill(x.data() + t * row_size, x.data() + (t + 1) * row_size, 0.0f);
  }
}

void zero_masked_rows(Tensor& x, const std::vector<uint8_t>& mask) { zero_masked_rows(x, RowMask(mask)); }

// Σ_i x[i], accumulated in double
double sum(const Tensor& x) {
  if (on_cuda("sum", x)) return sum_cuda(x.data(), x.numel(), cuda::stream());
  const float* values = x.data();
  return fixed_order_sum(x.numel(), [values](int64_t i) { return static_cast<double>(values[i]); });
}

// Σ_i x[i] / n   (NaN when x is empty)
double mean(const Tensor& x) {
  return x.numel() == 0 ? std::numeric_limits<double>::quiet_NaN() : sum(x) / static_cast<double>(x.numel());
}

// √(Σ_i (x[i] − mean)² / (n − 1)), two passes in double   (NaN when n < 2, as torch.std)
double standard_deviation(const Tensor& x) {
  const int64_t count = x.numel();
  if (count < 2) return std::numeric_limits<double>::quiet_NaN();
  const double average = mean(x);
  if (on_cuda("standard_deviation", x)) {
    return std::sqrt(sum_squared_deviation_cuda(x.data(), count, average, cuda::stream()) /
                     static_cast<double>(count - 1));
  }
  const float* values = x.data();
  const double squares = fixed_order_sum(count, [values, average](int64_t i) {
    const double deviation = values[i] - average;
    return deviation * deviation;
  });
  return std::sqrt(squares / static_cast<double>(count - 1));
}

// max_i |x[i]|   (0 when x is empty; NaN when any value is NaN, so that a divergence is never hidden)
float max_abs(const Tensor& x) {
  if (on_cuda("max_abs", x)) return max_abs_cuda(x.data(), x.numel(), cuda::stream());
  const float* values = x.data();
  float largest = 0;
  int64_t not_a_number = 0;
#pragma omp parallel for reduction(max : largest) reduction(+ : not_a_number) if (x.numel() >= kParallelMinimumWork)
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (std::isnan(values[i])) ++not_a_number;
    largest = std::max(largest, std::abs(values[i]));
  }
  return not_a_number > 0 ? std::numeric_limits<float>::quiet_NaN() : largest;
}

}  // namespace mr1
