// CUDA kernels of the elementwise and layout ops, the row gather / grouped scatter-add, the masked-row
// zeroing and the reductions to one number. Shape letters: T rows, F features, n values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cuda_device.cuh"
#include "kernels/elementwise_cuda.h"

namespace mr1 {

namespace {

constexpr int kThreads = 256;

// One thread per value in a grid-stride loop: out[i] = combine(i).
template <typename Combine>
__global__ void map_kernel(int64_t n, Combine combine) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) combine(i);
}

template <typename Combine>
void launch_map(int64_t n, Combine combine, void* stream, const char* what) {
  if (n <= 0) return;
  map_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(n, combine);
  cuda::check_launch(what);
}

}  // namespace

void add_scaled_cuda(float* out, const float* a, const float* b, float scale, int64_t n, void* stream) {
  if (scale == 1.0f) {
    launch_map(
        n, [=] __device__(int64_t i) { out[i] = a[i] + b[i]; }, stream, "add_kernel");
  } else {
    launch_map(
        n, [=] __device__(int64_t i) { out[i] = a[i] + scale * b[i]; }, stream, "add_scaled_kernel");
  }
}

void multiply_cuda(float* out, const float* a, const float* b, int64_t n, void* stream) {
  launch_map(
      n, [=] __device__(int64_t i) { out[i] = a[i] * b[i]; }, stream, "multiply_kernel");
}

void scale_cuda(float* out, const float* a, float factor, int64_t n, void* stream) {
  launch_map(
      n, [=] __device__(int64_t i) { out[i] = factor * a[i]; }, stream, "scale_kernel");
}

void copy_columns_cuda(const float* source, int64_t source_features, int64_t source_begin, float* destination,
                       int64_t destination_features, int64_t destination_begin, int64_t width, int64_t T,
                       void* stream) {
  if (width <= 0 || T <= 0) return;
  CUDA_CHECK(cudaMemcpy2DAsync(destination + destination_begin, destination_features * sizeof(float),
                               source + source_begin, source_features * sizeof(float), width * sizeof(float), T,
                               cudaMemcpyDeviceToDevice, cuda::as_stream(stream)));
}

void gather_rows_cuda(const float* x, const int64_t* rows, float* out, int64_t count, int64_t F, void* stream) {
  launch_map(
      count * F, [=] __device__(int64_t i) { out[i] = x[rows[i / F] * F + i % F]; }, stream, "gather_rows_kernel");
}

namespace {

// Block x: one group (destination row); block y and threads: features.
__global__ void scatter_add_rows_kernel(float* out, const float* x, const int64_t* destinations, const int64_t* offsets,
                                        const int64_t* sources, const float* scale, int64_t F) {
  const int64_t group = blockIdx.x;
  const int64_t f = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (f >= F) return;
  float* target = out + destinations[group] * F + f;
  float total = *target;
  for (int64_t s = offsets[group]; s < offsets[group + 1]; ++s) {
    const int64_t i = sources[s];
    total += (scale ? scale[i] : 1.0f) * x[i * F + f];
  }
  *target = total;
}

}  // namespace

void scatter_add_rows_cuda(float* out, const float* x, const int64_t* destinations, const int64_t* offsets,
                           const int64_t* sources, const float* scale, int64_t G, int64_t F, void* stream) {
  if (G <= 0 || F <= 0) return;
  const dim3 grid(static_cast<unsigned>(G), static_cast<unsigned>((F + kThreads - 1) / kThreads));
  scatter_add_rows_kernel<<<grid, kThreads, 0, cuda::as_stream(stream)>>>(out, x, destinations, offsets, sources, scale,
                                                                          F);
  cuda::check_launch("scatter_add_rows_kernel");
}

void zero_masked_rows_cuda(float* x, const uint8_t* mask, int64_t T, int64_t row_size, void* stream) {
  launch_map(
      T * row_size,
      [=] __device__(int64_t i) {
        if (mask[i / row_size] == 0) x[i] = 0.0f;
      },
      stream, "zero_masked_rows_kernel");
}

namespace {

constexpr int kReduceBlocks = 512;

// Σ_i (x[i] − center)^power (power 1 or 2), or max_i |x[i]| (NaN when any is NaN), in double.
struct ReduceOp {
  enum Kind { sum, squared_deviation, max_abs } kind;
  double center;

  __device__ double map(float value) const {
    if (kind == sum) return value;
    if (kind == squared_deviation) {
      const double deviation = value - center;
      return deviation * deviation;
    }
    return fabs(static_cast<double>(value));
  }
  __device__ double combine(double a, double b) const {
    if (kind != max_abs) return a + b;
    return (a != a || b != b) ? NAN : fmax(a, b);
  }
};

// The block's threads' values combined in a fixed tree order; thread 0 gets the result.
__device__ double block_combine(double value, ReduceOp op) {
  __shared__ double scratch[kThreads];
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) scratch[threadIdx.x] = op.combine(scratch[threadIdx.x], scratch[threadIdx.x + width]);
    __syncthreads();
  }
  return scratch[0];
}

// Each block reduces a fixed grid-stride subset of x (n) to its partial. The same grid for the same n:
// the same order of operations.
__device__ void reduce_part(const float* x, int64_t n, ReduceOp op, double* partial) {
  double value = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    value = op.combine(value, op.map(x[i]));
  }
  value = block_combine(value, op);
  if (threadIdx.x == 0) *partial = value;
}

// partial[blockIdx.x]; the last pass reduces the partials with one block.
__global__ void reduce_kernel(const float* x, int64_t n, ReduceOp op, double* partial) {
  reduce_part(x, n, op, partial + blockIdx.x);
}

// Many arrays at once: row blockIdx.y reduces arrays[y] (sizes[y] values) to partial[y · gridDim.x + blockIdx.x].
__global__ void reduce_many_kernel(const float* const* arrays, const int64_t* sizes, ReduceOp op, double* partial) {
  reduce_part(arrays[blockIdx.y], sizes[blockIdx.y], op, partial + blockIdx.y * gridDim.x + blockIdx.x);
}

// Block b reduces the count partials of row b to result[b].
__global__ void reduce_partials_kernel(const double* partial, int64_t count, ReduceOp op, double* result) {
  const double* row = partial + blockIdx.x * count;
  double value = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) value = op.combine(value, row[i]);
  value = block_combine(value, op);
  if (threadIdx.x == 0) result[blockIdx.x] = value;
}

double reduce(const float* x, int64_t n, ReduceOp op, void* stream) {
  if (n <= 0) return 0.0;
  const unsigned blocks = cuda::blocks_for(n, kThreads, kReduceBlocks);
  cuda::DeviceBuffer partial(blocks * sizeof(double)), result(sizeof(double));
  cudaStream_t s = cuda::as_stream(stream);
  reduce_kernel<<<blocks, kThreads, 0, s>>>(x, n, op, partial.as<double>());
  cuda::check_launch("reduce_kernel");
  reduce_partials_kernel<<<1, kThreads, 0, s>>>(partial.as<double>(), blocks, op, result.as<double>());
  cuda::check_launch("reduce_partials_kernel");
  return cuda::download<double>(result, 1)[0];
}

}  // namespace

double sum_cuda(const float* x, int64_t n, void* stream) { return reduce(x, n, ReduceOp{ReduceOp::sum, 0.0}, stream); }

double sum_squared_deviation_cuda(const float* x, int64_t n, double center, void* stream) {
  return reduce(x, n, ReduceOp{ReduceOp::squared_deviation, center}, stream);
}

void sum_squares_cuda(const float* const* arrays, const int64_t* sizes, int64_t count, double* sums, void* stream) {
  if (count <= 0) return;
  const int64_t longest = *std::max_element(sizes, sizes + count);
  const unsigned blocks = cuda::blocks_for(std::max<int64_t>(longest, 1), kThreads, kReduceBlocks);
  // The arrays and their sizes, copied at once.
  cuda::DeviceBuffer tables;
  const auto [device_arrays, device_sizes] = cuda::upload_together(
      tables, std::vector<const float*>(arrays, arrays + count), std::vector<int64_t>(sizes, sizes + count));
  cuda::DeviceBuffer partial(static_cast<size_t>(count) * blocks * sizeof(double));
  cuda::DeviceBuffer result(static_cast<size_t>(count) * sizeof(double));
  cudaStream_t s = cuda::as_stream(stream);
  const ReduceOp op{ReduceOp::squared_deviation, 0.0};
  for (int64_t first = 0; first < count; first += cuda::kMaxGridYZ) {  // a row of the grid's y per array
    const int64_t rows = std::min(cuda::kMaxGridYZ, count - first);
    reduce_many_kernel<<<dim3(blocks, static_cast<unsigned>(rows)), kThreads, 0, s>>>(
        device_arrays + first, device_sizes + first, op, partial.as<double>() + first * blocks);
    cuda::check_launch("reduce_many_kernel");
  }
  reduce_partials_kernel<<<static_cast<unsigned>(count), kThreads, 0, s>>>(partial.as<double>(), blocks, op,
                                                                           result.as<double>());
  cuda::check_launch("reduce_partials_kernel");
  const std::vector<double> values = cuda::download<double>(result, count);
  std::copy(values.begin(), values.end(), sums);
}

float max_abs_cuda(const float* x, int64_t n, void* stream) {
  return static_cast<float>(reduce(x, n, ReduceOp{ReduceOp::max_abs, 0.0}, stream));
}

}  // namespace mr1
