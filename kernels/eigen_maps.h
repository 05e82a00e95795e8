// CPU helpers shared by the op implementations: row-major Eigen views of tensors and the
// checks on the last (feature) axis. CPU-only: never included by .cu files.
#pragma once

// Warnings that are not ours, silenced for Eigen alone (they show when Eigen is not a system include):
// GCC 12's AVX-512 intrinsics trip -W(maybe-)uninitialized inside Eigen's GEMM kernels (GCC bug 105593),
// and Eigen 3.4's AVX packet code leaves unused variables.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/tensor.h"

namespace mr1 {

using RowMajorMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMajorMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMajorMatrix>;
using RowVectorMap = Eigen::Map<Eigen::RowVectorXf>;
using ConstRowVectorMap = Eigen::Map<const Eigen::RowVectorXf>;

// Below this many elements a loop runs on one thread: starting threads would cost more than it saves.
constexpr int64_t kParallelMinimumWork = int64_t{1} << 14;

// T: the number of rows of x (..., F) once every axis but the last is flattened (1 for a rank-1 x).
inline int64_t row_count(const Tensor& x) {
  int64_t rows = 1;
  for (int axis = 0; axis + 1 < x.rank(); ++axis) rows *= x.shape()[axis];
  return rows;
}

// `shape` with its last axis replaced by `last`.
inline Shape with_last_axis(Shape shape, int64_t last) {
  shape.back() = last;
  return shape;
}

// Throws ShapeError "<what>: expected shape (*, *, F), found ..." unless x has rank >= 1 and a last axis of
// `features` (any size when `features` is negative).
inline void check_last_axis(const Tensor& x, int64_t features, const std::string& what) {
  Shape expected(static_cast<size_t>(std::max(x.rank(), 1)), -1);
  expected.back() = features;
  check_shape(x, expected, what);
}

// x (..., F) viewed as the (T, F) matrix of its rows.
inline MatrixMap matrix_of_rows(Tensor& x) { return MatrixMap(x.data(), row_count(x), x.size(-1)); }
inline ConstMatrixMap matrix_of_rows(const Tensor& x) { return ConstMatrixMap(x.data(), row_count(x), x.size(-1)); }

// A rank-1 tensor (F) viewed as a row vector.
inline RowVectorMap row_vector(Tensor& x) { return RowVectorMap(x.data(), x.numel()); }
inline ConstRowVectorMap row_vector(const Tensor& x) { return ConstRowVectorMap(x.data(), x.numel()); }

}  // namespace mr1
