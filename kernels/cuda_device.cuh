// What the .cu files share: checked CUDA and cuBLAS calls, the stream and cuBLAS handle, launch
// sizes, warp and block reductions, and the deterministic column sums of the backward passes.
// CUDA only: included by .cu files, never by .cpp files (which see kernels/cuda_device.h).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_device.h"

namespace mr1::cuda {

// Throws std::runtime_error "<call> failed: <CUDA error string>" unless status is cudaSuccess.
void check(cudaError_t status, const char* call);
// Throws std::runtime_error "<call> failed: <cuBLAS status name>" unless status is CUBLAS_STATUS_SUCCESS.
void check_cublas(cublasStatus_t status, const char* call);

// After a kernel launch: a bad configuration fails here, naming the kernel. (A fault inside the kernel
// surfaces at the next synchronising call, which names itself.)
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// The cuBLAS handle, created on first use and bound to `stream`.
cublasHandle_t cublas_handle(cudaStream_t stream);

// The most blocks a grid may have along y and along z (x allows 2^31 − 1).
constexpr int64_t kMaxGridYZ = 65535;

// Blocks of `threads` covering `count` items, capped for grid-stride loops.
inline unsigned blocks_for(int64_t count, int threads, int64_t cap = int64_t{1} << 20) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// Throws std::runtime_error when a size does not fit the int of a cuBLAS call.
inline int as_int(int64_t value, const char* what) {
  if (value < 0 || value > INT32_MAX) {
    throw std::runtime_error(std::string(what) + ": size " + std::to_string(value) +
                             " exceeds the int range of cuBLAS");
  }
  return static_cast<int>(value);
}

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(kFullMask, value, offset));
  return value;
}

// Σ over the block of `value` (blockDim.x a multiple of 32, at most 1024); every thread gets the sum.
// `scratch` holds 32 values of shared memory; the call synchronises the block twice.
template <typename T>
__device__ __forceinline__ T block_sum(T value, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  value = warp_sum(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];  // the same order in every thread
  return total;
}

__device__ __forceinline__ float block_max(float value, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  value = warp_max(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  float largest = -INFINITY;
  for (int w = 0; w < warps; ++w) largest = fmaxf(largest, scratch[w]);
  return largest;
}

// σ(v) = 1 / (1 + exp(−v)), written so that exp never overflows (as the CPU's stable_sigmoid).
__device__ __forceinline__ float stable_sigmoid(float v) {
  if (v >= 0) return 1.0f / (1.0f + expf(-v));
  const float e = expf(v);
  return e / (1.0f + e);
}

// Column sums out[j] = Σ_t term(t, j) over rows t < T, for j < columns (`term` a device functor
// returning double). Deterministic: each block sums a stripe of 32 columns over one segment of rows in
// a fixed order, then one pass adds the segments in order. `accumulate` adds to out instead of writing.
namespace detail {

constexpr int kColumnStripe = 32, kColumnRowsPerPass = 8;

template <typename Term>
__global__ void column_partial_sums_kernel(Term term, int64_t rows, int64_t columns, int64_t rows_per_segment,
                                           double* partial /* (segments, columns) */) {
  __shared__ double sums[kColumnRowsPerPass][kColumnStripe];
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kColumnStripe + threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * rows_per_segment;
  const int64_t last = min(rows, first + rows_per_segment);
  double total = 0;
  if (column < columns) {
    for (int64_t t = first + threadIdx.y; t < last; t += kColumnRowsPerPass) total += term(t, column);
  }
  sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && column < columns) {
    double segment = 0;
    for (int r = 0; r < kColumnRowsPerPass; ++r) segment += sums[r][threadIdx.x];
    partial[blockIdx.y * columns + column] = segment;
  }
}

// out[j] (+)= Σ_s partial[s, j], in segment order. Static: each .cu file has its own copy (no relocatable
// device code in this build).
static __global__ void column_segments_total_kernel(const double* partial, int64_t segments, int64_t columns,
                                                    float* out, bool accumulate) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; column < columns;
       column += stride) {
    double total = 0;
    for (int64_t s = 0; s < segments; ++s) total += partial[s * columns + column];
    out[column] = accumulate ? out[column] + static_cast<float>(total) : static_cast<float>(total);
  }
}

}  // namespace detail

// The plain term values[t · columns + j] of a row-major (T, columns) matrix: column sums of a matrix.
struct MatrixEntries {
  const float* values;
  int64_t columns;
  __device__ double operator()(int64_t t, int64_t j) const { return values[t * columns + j]; }
};

template <typename Term>
void column_sums(Term term, int64_t rows, int64_t columns, float* out, bool accumulate, cudaStream_t stream,
                 const char* what) {
  if (columns == 0) return;
  const int64_t stripes = (columns + detail::kColumnStripe - 1) / detail::kColumnStripe;
  // About 128 rows per segment, at most 1024 segments; fewer when the stripes alone fill the device.
  int64_t segments = std::min<int64_t>((rows + 127) / 128, 1024);
  segments = std::max<int64_t>(1, std::min<int64_t>(segments, std::max<int64_t>(1, 4096 / stripes)));
  const int64_t rows_per_segment = std::max<int64_t>(1, (rows + segments - 1) / segments);
  segments = std::max<int64_t>(1, (rows + rows_per_segment - 1) / rows_per_segment);
  DeviceBuffer partial(static_cast<std::size_t>(segments * columns) * sizeof(double));
  detail::column_partial_sums_kernel<<<dim3(static_cast<unsigned>(stripes), static_cast<unsigned>(segments)),
                                       dim3(detail::kColumnStripe, detail::kColumnRowsPerPass), 0, stream>>>(
      term, rows, columns, rows_per_segment, partial.as<double>());
  check_launch(what);
  detail::column_segments_total_kernel<<<blocks_for(columns, 256), 256, 0, stream>>>(partial.as<double>(), segments,
                                                                                     columns, out, accumulate);
  check_launch(what);
}

}  // namespace mr1::cuda

#define CUDA_CHECK(call) ::mr1::cuda::check((call), #call)
#define CUBLAS_CHECK(call) ::mr1::cuda::check_cublas((call), #call)
