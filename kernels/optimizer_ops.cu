// The optimizer updates on CUDA: one thread per parameter value, the CPU's float formulas term by term;
// the many-tensor kernels give each block one chunk of 65536 values of one tensor.
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cuda_device.cuh"
#include "kernels/optimizer_ops_cuda.h"

namespace mr1 {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 65536;  // values per block of the many-tensor kernels

// The AdamW update of value i (the CPU's float formula, term by term). Each operation is rounded on its own
// (__fmul_rn and __fadd_rn are never contracted into a fused multiply-add), so that the one-tensor and the
// many-tensor kernels give the same bits: left to itself, nvcc fuses differently in the two loops (seen on
// an H200: the parameters 1 ulp apart).
__device__ __forceinline__ void adamw_value(float* p, const float* g, float* first, float* second, int64_t i,
                                            float decay, float beta1, float beta2, float step_size,
                                            float root_correction2, float epsilon) {
  const float grad = g[i];
  const float m = __fadd_rn(__fmul_rn(beta1, first[i]), __fmul_rn(1.0f - beta1, grad));
  const float v = __fadd_rn(__fmul_rn(beta2, second[i]), __fmul_rn(__fmul_rn(1.0f - beta2, grad), grad));
  const float denominator = __fadd_rn(__fdiv_rn(sqrtf(v), root_correction2), epsilon);
  const float value = __fsub_rn(__fmul_rn(p[i], decay), __fdiv_rn(__fmul_rn(step_size, m), denominator));
  first[i] = m;
  second[i] = v;
  p[i] = value;
}

__global__ void adamw_update_kernel(float* p, const float* g, float* first, float* second, int64_t n, float decay,
                                    float beta1, float beta2, float step_size, float root_correction2, float epsilon) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    adamw_value(p, g, first, second, i, decay, beta1, beta2, step_size, root_correction2, epsilon);
  }
}

// The many-tensor kernels: block b updates values [start, min(start + kChunk, n)) of slot `slot`, where
// chunks[2b] = slot and chunks[2b + 1] = start.
__global__ void adamw_update_many_kernel(const AdamWSlot* slots, const int64_t* chunks, float beta1, float beta2,
                                         float step_size, float root_correction2, float epsilon) {
  const AdamWSlot slot = slots[chunks[2 * blockIdx.x]];
  const int64_t start = chunks[2 * blockIdx.x + 1], end = min(start + kChunk, slot.n);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    adamw_value(slot.parameter, slot.grad, slot.m, slot.v, i, slot.decay, beta1, beta2, step_size, root_correction2,
                epsilon);
  }
}

// x ← value · x, or x ← value when `overwrite`.
__global__ void scale_or_fill_many_kernel(float* const* arrays, const int64_t* sizes, const int64_t* chunks,
                                          float value, bool overwrite) {
  const int64_t array = chunks[2 * blockIdx.x];
  float* x = arrays[array];
  const int64_t start = chunks[2 * blockIdx.x + 1], end = min(start + kChunk, sizes[array]);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) x[i] = overwrite ? value : value * x[i];
}

// (array, start) of every chunk of kChunk values of arrays of these sizes: two values per chunk.
std::vector<int64_t> chunk_table(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> table;
  for (size_t a = 0; a < sizes.size(); ++a) {
    for (int64_t start = 0; start < sizes[a]; start += kChunk) {
      table.push_back(static_cast<int64_t>(a));
      table.push_back(start);
    }
  }
  return table;
}

__global__ void sgd_update_kernel(float* p, const float* g, float* buffer, int64_t n, float decay, float learning_rate,
                                  float momentum) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float direction = g[i];
    if (buffer) direction = buffer[i] = momentum * buffer[i] + g[i];
    p[i] = p[i] * decay - learning_rate * direction;
  }
}

}  // namespace

void adamw_update_cuda(float* parameter, const float* grad, float* m, float* v, int64_t n, float decay, float beta1,
                       float beta2, float step_size, float root_correction2, float epsilon, void* stream) {
  if (n <= 0) return;
  adamw_update_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(
      parameter, grad, m, v, n, decay, beta1, beta2, step_size, root_correction2, epsilon);
  cuda::check_launch("adamw_update_kernel");
}

void adamw_update_many_cuda(const AdamWSlot* slots, int64_t count, float beta1, float beta2, float step_size,
                            float root_correction2, float epsilon, void* stream) {
  if (count <= 0) return;
  std::vector<int64_t> sizes;
  for (int64_t s = 0; s < count; ++s) sizes.push_back(slots[s].n);
  const std::vector<int64_t> table = chunk_table(sizes);
  const auto chunks = static_cast<unsigned>(table.size() / 2);
  if (chunks == 0) return;
  cuda::DeviceBuffer tables;
  const auto [device_slots, device_table] =
      cuda::upload_together(tables, std::vector<AdamWSlot>(slots, slots + count), table);
  adamw_update_many_kernel<<<chunks, kThreads, 0, cuda::as_stream(stream)>>>(
      device_slots, device_table, beta1, beta2, step_size, root_correction2, epsilon);
  cuda::check_launch("adamw_update_many_kernel");
}

namespace {

void scale_or_fill_many(float* const* arrays, const int64_t* sizes, int64_t count, float value, bool overwrite,
                        void* stream) {
  if (count <= 0) return;
  const std::vector<int64_t> size_list(sizes, sizes + count);
  const std::vector<int64_t> table = chunk_table(size_list);
  const auto chunks = static_cast<unsigned>(table.size() / 2);
  if (chunks == 0) return;
  cuda::DeviceBuffer tables;
  const auto [device_arrays, device_sizes, device_table] =
      cuda::upload_together(tables, std::vector<float*>(arrays, arrays + count), size_list, table);
  scale_or_fill_many_kernel<<<chunks, kThreads, 0, cuda::as_stream(stream)>>>(device_arrays, device_sizes, device_table,
                                                                              value, overwrite);
  cuda::check_launch("scale_or_fill_many_kernel");
}

}  // namespace

void scale_many_cuda(float* const* arrays, const int64_t* sizes, int64_t count, float factor, void* stream) {
  scale_or_fill_many(arrays, sizes, count, factor, false, stream);
}

void fill_many_cuda(float* const* arrays, const int64_t* sizes, int64_t count, float value, void* stream) {
  scale_or_fill_many(arrays, sizes, count, value, true, stream);
}

void sgd_update_cuda(float* parameter, const float* grad, float* momentum_buffer, int64_t n, float decay,
                     float learning_rate, float momentum, void* stream) {
  if (n <= 0) return;
  sgd_update_kernel<<<cuda::blocks_for(n, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(
      parameter, grad, momentum_buffer, n, decay, learning_rate, momentum);
  cuda::check_launch("sgd_update_kernel");
}

}  // namespace mr1
