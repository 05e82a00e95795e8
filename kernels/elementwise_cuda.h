// CUDA launchers of the elementwise and layout ops, and the row gather / scatter-add shared by
// gather_rows, scatter_add_rows and the embedding. Raw device pointers; plain C++ header.
// Shape letters: T rows, F features (the last axis), n values.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda_device.h"

namespace mr1 {

// out[i] = a[i] + scale · b[i]   (add, add_inplace with out = a, add_scaled_inplace)
void add_scaled_cuda(float* out, const float* a, const float* b, float scale, int64_t n, void* stream);
// out[i] = a[i] · b[i]
void multiply_cuda(float* out, const float* a, const float* b, int64_t n, void* stream);
// out[i] = factor · a[i]
void scale_cuda(float* out, const float* a, float factor, int64_t n, void* stream);

// destination[t, destination_begin + j] = source[t, source_begin + j] for t < T, j < width
// (split_last, columns, concat_last); source (T, source_features), destination (T, destination_features).
void copy_columns_cuda(const float* source, int64_t source_features, int64_t source_begin, float* destination,
                       int64_t destination_features, int64_t destination_begin, int64_t width, int64_t T, void* stream);

// out[i] = x[rows[i]]     x (*, F), rows: count device indices, out (count, F)
void gather_rows_cuda(const float* x, const int64_t* rows, float* out, int64_t count, int64_t F, void* stream);

// The sources of a scatter-add grouped by destination row, each group in increasing source order, so
// that every destination row is summed by one thread per feature in the CPU's order (deterministic,
// no atomics). Built on the host from the destination of each source row.
struct RowGroups {
  std::vector<int64_t> destinations;  // G distinct destination rows, increasing
  std::vector<int64_t> offsets;       // G + 1: group g holds sources[offsets[g] .. offsets[g + 1])
  std::vector<int64_t> sources;       // source row indices, grouped
};
// destination_of[i] in [0, row_count) for every source row i.
template <typename Index>
RowGroups group_rows_by_destination(const std::vector<Index>& destination_of, int64_t row_count) {
  std::vector<int64_t> counts(static_cast<size_t>(row_count) + 1, 0);
  for (Index row : destination_of) ++counts[static_cast<size_t>(row) + 1];
  for (int64_t r = 0; r < row_count; ++r) counts[r + 1] += counts[r];  // counts[r]: first slot of row r
  RowGroups groups;
  groups.sources.resize(destination_of.size());
  std::vector<int64_t> next(counts.begin(), counts.end() - 1);
  for (size_t i = 0; i < destination_of.size(); ++i)
    groups.sources[next[destination_of[i]]++] = static_cast<int64_t>(i);
  groups.offsets.push_back(0);
  for (int64_t r = 0; r < row_count; ++r) {
    if (counts[r + 1] == counts[r]) continue;
    groups.destinations.push_back(r);
    groups.offsets.push_back(counts[r + 1]);
  }
  return groups;
}

// out[destinations[g]] += Σ_{i in group g, in order} scale[i] · x[i]   (scale 1 when null)
// out (*, F), x (*, F); destinations (G), offsets (G + 1), sources, scale: device arrays.
void scatter_add_rows_cuda(float* out, const float* x, const int64_t* destinations, const int64_t* offsets,
                           const int64_t* sources, const float* scale, int64_t G, int64_t F, void* stream);

// out[destination_of[i]] += scale[i] · x[i] for every source row i (scale 1 when null): the rows grouped
// by destination here, the groups' tables copied to the device at once, then scatter_add_rows_cuda.
// out (row_count, F), x (destination_of.size(), F) on the device; scale: host values, one per row.
template <typename Index>
void scatter_add_rows_by_destination_cuda(float* out, const float* x, const std::vector<Index>& destination_of,
                                          int64_t row_count, const std::vector<float>* scale, int64_t F,
                                          void* stream) {
  const RowGroups groups = group_rows_by_destination(destination_of, row_count);
  cuda::DeviceBuffer tables;
  const auto [destinations, offsets, sources, scales] = cuda::upload_together(
      tables, groups.destinations, groups.offsets, groups.sources, scale ? *scale : std::vector<float>());
  scatter_add_rows_cuda(out, x, destinations, offsets, sources, scales,
                        static_cast<int64_t>(groups.destinations.size()), F, stream);
}

// x[t] = 0 where mask[t] == 0     x (T, row_size), mask: T device bytes
void zero_masked_rows_cuda(float* x, const uint8_t* mask, int64_t T, int64_t row_size, void* stream);

// Reductions to one number, accumulated in double in a fixed order; they wait for the result.
double sum_cuda(const float* x, int64_t n, void* stream);
double sum_squared_deviation_cuda(const float* x, int64_t n, double center, void* stream);  // Σ (x − center)²
float max_abs_cuda(const float* x, int64_t n, void* stream);  // NaN when any value is NaN; 0 when n = 0
// sums[i] = Σ arrays[i][j]² over j < sizes[i], for i < count, with one wait for the device (each sum as
// sum_squared_deviation_cuda's, though its order of additions may differ). arrays: device pointers in a
// host array; sizes, sums: host arrays.
void sum_squares_cuda(const float* const* arrays, const int64_t* sizes, int64_t count, double* sums, void* stream);

}  // namespace mr1
