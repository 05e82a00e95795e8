// Elementwise and layout helpers on the CPU: plain loops over the flat values, Eigen blocks for columns.
// Shape letters: T rows (all leading axes flattened), F features (the last axis).
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"

namespace mr1 {

namespace {

// Throws unless b has a's shape; fails loudly for CUDA tensors. `op` names the caller in the message.
void check_same_shape_on_cpu(const char* op, const Tensor& a, const Tensor& b) {
  check_shape(b, a.shape(), std::string(op) + ": b");
  if (common_device(op, {&a, &b}) == Device::cuda) no_cuda_kernel(op);
}

void require_cpu(const char* op, const Tensor& x) {
  if (common_device(op, {&x}) == Device::cuda) no_cuda_kernel(op);
}

// out[i] = combine(a[i], b[i]) over `count` values; out may be a.
template <typename Combine>
void combine_values(float* out, const float* a, const float* b, int64_t count, Combine combine) {
#pragma omp parallel for if (count >= kParallelMinimumWork)
  for (int64_t i = 0; i < count; ++i) out[i] = combine(a[i], b[i]);
}

// destination[:, destination_begin + j] = source[:, source_begin + j] for j < width; both have T rows.
void copy_columns(const Tensor& source, int64_t source_begin, Tensor& destination, int64_t destination_begin,
                  int64_t width) {
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
  check_same_shape_on_cpu("add_inplace", a, b);
  combine_values(a.data(), a.data(), b.data(), a.numel(), [](float u, float v) { return u + v; });
}

// a += scale · b
void add_scaled_inplace(Tensor& a, const Tensor& b, float scale) {
  check_same_shape_on_cpu("add_scaled_inplace", a, b);
  combine_values(a.data(), a.data(), b.data(), a.numel(), [scale](float u, float v) { return u + scale * v; });
}

// out = a + b
Tensor add(const Tensor& a, const Tensor& b) {
  check_same_shape_on_cpu("add", a, b);
  Tensor out(a.shape());
  combine_values(out.data(), a.data(), b.data(), a.numel(), [](float u, float v) { return u + v; });
  return out;
}

// out = a ⊙ b
Tensor multiply(const Tensor& a, const Tensor& b) {
  check_same_shape_on_cpu("multiply", a, b);
  Tensor out(a.shape());
  combine_values(out.data(), a.data(), b.data(), a.numel(), [](float u, float v) { return u * v; });
  return out;
}

// out = factor · a
Tensor scale(const Tensor& a, float factor) {
  require_cpu("scale", a);
  Tensor out(a.shape());
  combine_values(out.data(), a.data(), a.data(), a.numel(), [factor](float u, float) { return factor * u; });
  return out;
}

// x (..., F) → x[..., :at] (..., at) and x[..., at:] (..., F − at)
std::pair<Tensor, Tensor> split_last(const Tensor& x, int64_t at) {
  check_column_range("split_last", x, at, at);
  require_cpu("split_last", x);
  const int64_t features = x.size(-1);
  Tensor left(with_last_axis(x.shape(), at));
  Tensor right(with_last_axis(x.shape(), features - at));
  copy_columns(x, 0, left, 0, at);
  copy_columns(x, at, right, 0, features - at);
  return {left, right};
}

// x (..., F) → x[..., begin:end] (..., end − begin)
Tensor columns(const Tensor& x, int64_t begin, int64_t end) {
  check_column_range("columns", x, begin, end);
  require_cpu("columns", x);
  Tensor out(with_last_axis(x.shape(), end - begin));
  copy_columns(x, begin, out, 0, end - begin);
  return out;
}

// a (..., Fa), b (..., Fb) → [a, b] (..., Fa + Fb)
Tensor concat_last(const Tensor& a, const Tensor& b) {
  check_last_axis(a, -1, "concat_last: a");
  check_shape(b, with_last_axis(a.shape(), -1), "concat_last: b");
  if (common_device("concat_last", {&a, &b}) == Device::cuda) no_cuda_kernel("concat_last");
  const int64_t a_features = a.size(-1);
  const int64_t b_features = b.size(-1);
  Tensor out(with_last_axis(a.shape(), a_features + b_features));
  copy_columns(a, 0, out, 0, a_features);
  copy_columns(b, 0, out, a_features, b_features);
  return out;
}

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
  require_cpu("gather_rows", x);
  const int64_t count = static_cast<int64_t>(rows.size());
  Tensor out({count, x.size(1)});
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
  if (common_device("scatter_add_rows", {&out, &x}) == Device::cuda) no_cuda_kernel("scatter_add_rows");
  const ConstMatrixMap source = matrix_of_rows(x);
  MatrixMap destination = matrix_of_rows(out);
  for (size_t i = 0; i < rows.size(); ++i) {
    const float factor = scale ? (*scale)[i] : 1.0f;
    destination.row(rows[i]) += factor * source.row(static_cast<int64_t>(i));
  }
}

// x[b, l, ...] = 0 where mask[b·L + l] == 0     x (B, L, ...), mask (B·L)
void zero_masked_rows(Tensor& x, const std::vector<uint8_t>& mask) {
  if (x.rank() < 2) throw ShapeError("zero_masked_rows: x: expected shape (B, L, ...), found " + x.shape_string());
  const int64_t tokens = x.size(0) * x.size(1);
  if (static_cast<int64_t>(mask.size()) != tokens) {
    throw ShapeError("zero_masked_rows: mask: expected B*L = " + std::to_string(tokens) + " entries for x of shape " +
                     x.shape_string() + ", found " + std::to_string(mask.size()));
  }
  require_cpu("zero_masked_rows", x);
  const int64_t row_size = tokens == 0 ? 0 : x.numel() / tokens;
#pragma omp parallel for if (x.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < tokens; ++t) {
    if (mask[t] == 0) std::fill(x.data() + t * row_size, x.data() + (t + 1) * row_size, 0.0f);
  }
}

// Σ_i x[i], accumulated in double
double sum(const Tensor& x) {
  require_cpu("sum", x);
  const float* values = x.data();
  double total = 0;
#pragma omp parallel for reduction(+ : total) if (x.numel() >= kParallelMinimumWork)
  for (int64_t i = 0; i < x.numel(); ++i) total += values[i];
  return total;
}

// Σ_i x[i] / n   (NaN when x is empty)
double mean(const Tensor& x) {
  require_cpu("mean", x);
  return x.numel() == 0 ? std::numeric_limits<double>::quiet_NaN() : sum(x) / static_cast<double>(x.numel());
}

// √(Σ_i (x[i] − mean)² / (n − 1)), two passes in double   (NaN when n < 2, as torch.std)
double standard_deviation(const Tensor& x) {
  require_cpu("standard_deviation", x);
  const int64_t count = x.numel();
  if (count < 2) return std::numeric_limits<double>::quiet_NaN();
  const double average = mean(x);
  const float* values = x.data();
  double squares = 0;
#pragma omp parallel for reduction(+ : squares) if (count >= kParallelMinimumWork)
  for (int64_t i = 0; i < count; ++i) {
    const double deviation = values[i] - average;
    squares += deviation * deviation;
  }
  return std::sqrt(squares / static_cast<double>(count - 1));
}

// max_i |x[i]|   (0 when x is empty; NaN when any value is NaN, so that a divergence is never hidden)
float max_abs(const Tensor& x) {
  require_cpu("max_abs", x);
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
