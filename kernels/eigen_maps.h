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
#include <exception>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

using RowMajorMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMajorMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMajorMatrix>;
using RowVectorMap = Eigen::Map<Eigen::RowVectorXf>;
using ConstRowVectorMap = Eigen::Map<const Eigen::RowVectorXf>;

// Below this many elements a loop runs on one thread: starting threads would cost more than it saves.
constexpr int64_t kParallelMinimumWork = int64_t{1} << 14;

// From this many multiply-adds a product is split across the threads.
constexpr int64_t kParallelProductWork = kParallelMinimumWork << 6;

// piece(begin, count) over [0, n) in fixed pieces of `size` (the last one shorter), in parallel when
// `parallel`. For an Eigen product split by its output's rows: each piece runs on one thread, and the
// pieces do not depend on the thread count, so neither do the bits. (Eigen's own multithreaded GEMM
// blocks a product by the thread count: other bits at another thread count.) An exception in a piece
// (an allocation that fails) is rethrown after the loop.
template <typename Piece>
void for_each_piece(int64_t n, int64_t size, bool parallel, Piece piece) {
  static const bool eigen_on_one_thread = (Eigen::setNbThreads(1), true);  // threads are given out here
  (void)eigen_on_one_thread;
  const int64_t pieces = (n + size - 1) / size;
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic) if (parallel && pieces > 1)
  for (int64_t p = 0; p < pieces; ++p) {
    try {
      piece(p * size, std::min(size, n - p * size));
    } catch (...) {
#pragma omp critical(for_each_piece_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// Σ_i term(i) over [0, n) in double, the same bits at any thread count: the range is cut into fixed
// blocks of 4096 terms, each summed in order (the blocks in parallel from `parallel_from` terms), then
// the blocks' sums are added in order. (An OpenMP reduction adds per-thread sums: other bits at another
// thread count.)
template <typename Term>
double fixed_order_sum(int64_t n, Term term, int64_t parallel_from = kParallelMinimumWork) {
  constexpr int64_t kBlock = 4096;
  std::vector<double> sums(static_cast<size_t>((n + kBlock - 1) / kBlock), 0.0);
  for_each_piece(n, kBlock, n >= parallel_from, [&](int64_t begin, int64_t count) {
    double total = 0;
    for (int64_t i = begin; i < begin + count; ++i) total += term(i);
    sums[static_cast<size_t>(begin / kBlock)] = total;
  });
  double total = 0;
  for (double part : sums) total += part;
  return total;
}

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
