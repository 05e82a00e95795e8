// GPU routing ops (kernels/routing_cuda.h): top-k per row, expert capacity as one ordered scan per
// expert, and the permutation of tokens to experts and back. Shape letters: T tokens, X experts,
// k choices per token, D features.
#include "kernels/cuda_device.cuh"
#include "kernels/routing_cuda.h"
#include "kernels/top_k_row.h"

namespace mr1 {

namespace {

constexpr int kThreads = 256;

// One thread per row, with the CPU's selection (kernels/top_k_row.h).
__global__ void top_k_kernel(const float* scores, int64_t T, int64_t X, int64_t k, int32_t* index, float* value) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  top_k_row(scores + t * X, X, k, index + t * k, value + t * k);
}

// slot = −1 everywhere; expert = −1 for every assignment of a masked token.
__global__ void clear_masked_kernel(int32_t* expert, int32_t* slot, int64_t T, int64_t k, const uint8_t* token_mask) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= T * k) return;
  slot[a] = -1;
  if (token_mask && token_mask[a / k] == 0) expert[a] = -1;
}

// Exclusive prefix sum of `flag` over the block (blockDim.x = kThreads); *total gets the block's sum.
__device__ int block_exclusive_scan(int flag, int* total) {
  __shared__ int warp_sums[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = flag;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(cuda::kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  __syncthreads();  // warp_sums may still be read by the previous tile
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < kThreads / 32; ++w) {
    if (w < warp) before += warp_sums[w];
    sum += warp_sums[w];
  }
  *total = sum;
  return before + inclusive - flag;
}

// Block j: the assignments of expert j in the order a' = r·T + t; the s-th keeps slot s when s < capacity.
__global__ void capacity_kernel(int32_t* expert, int32_t* slot, int64_t T, int64_t k, int64_t capacity, int64_t* routed,
                                int64_t* kept) {
  const int32_t j = blockIdx.x;
  const int64_t count = T * k;
  int64_t running = 0;
  for (int64_t tile = 0; tile < count; tile += kThreads) {
    const int64_t ordered = tile + threadIdx.x;
    int64_t storage = -1;
    int flag = 0;
    if (ordered < count) {
      storage = (ordered % T) * k + ordered / T;
      flag = expert[storage] == j ? 1 : 0;
    }
    int tile_total = 0;
    const int before = block_exclusive_scan(flag, &tile_total);
    if (flag) {
      const int64_t position = running + before;
      if (capacity >= 0 && position >= capacity) {
        expert[storage] = -1;
      } else {
        slot[storage] = static_cast<int32_t>(position);
      }
    }
    running += tile_total;
  }
  if (threadIdx.x == 0) {
    routed[j] = running;
    kept[j] = capacity >= 0 ? min(running, capacity) : running;
  }
}

__global__ void permutation_kernel(const int32_t* expert, const int32_t* slot, const int64_t* first_row, int64_t T,
                                   int64_t k, int64_t* token_of_row, int64_t* position) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= T * k) return;
  const int32_t j = expert[a];
  if (j < 0) {
    position[a] = -1;
    return;
  }
  const int64_t row = first_row[j] + slot[a];
  token_of_row[row] = a / k;
  position[a] = row;
}

__global__ void combine_kernel(const float* expert_out, const int64_t* position, const float* gate, float* out,
                               int64_t T, int64_t k, int64_t D) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < T * D; i += stride) {
    const int64_t t = i / D, d = i % D;
    float total = 0.0f;
    for (int64_t r = 0; r < k; ++r) {
      const int64_t row = position[t * k + r];
      if (row >= 0) total += gate[t * k + r] * expert_out[row * D + d];
    }
    out[i] = total;
  }
}

}  // namespace

void top_k_cuda(const float* scores, int64_t T, int64_t X, int64_t k, int32_t* index, float* value, void* stream) {
  if (T <= 0 || k <= 0) return;
  top_k_kernel<<<cuda::blocks_for(T, kThreads, INT32_MAX), kThreads, 0, cuda::as_stream(stream)>>>(scores, T, X, k,
                                                                                                   index, value);
  cuda::check_launch("top_k_kernel");
}

void apply_capacity_cuda(int32_t* expert, int64_t T, int64_t k, int64_t X, int64_t capacity, const uint8_t* token_mask,
                         int32_t* slot, int64_t* routed, int64_t* kept, void* stream) {
  if (X <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  if (T * k > 0) {
    clear_masked_kernel<<<cuda::blocks_for(T * k, kThreads, INT32_MAX), kThreads, 0, s>>>(expert, slot, T, k,
                                                                                          token_mask);
    cuda::check_launch("clear_masked_kernel");
  }
  capacity_kernel<<<static_cast<unsigned>(X), kThreads, 0, s>>>(expert, slot, T, k, capacity, routed, kept);
  cuda::check_launch("capacity_kernel");
}

void routing_permutation_cuda(const int32_t* expert, const int32_t* slot, const int64_t* first_row, int64_t T,
                              int64_t k, int64_t* token_of_row, int64_t* position, void* stream) {
  if (T * k <= 0) return;
  permutation_kernel<<<cuda::blocks_for(T * k, kThreads, INT32_MAX), kThreads, 0, cuda::as_stream(stream)>>>(
      expert, slot, first_row, T, k, token_of_row, position);
  cuda::check_launch("permutation_kernel");
}

void combine_from_experts_cuda(const float* expert_out, const int64_t* position, const float* gate, float* out,
                               int64_t T, int64_t k, int64_t D, void* stream) {
  if (T * D <= 0) return;
  combine_kernel<<<cuda::blocks_for(T * D, kThreads, 65536), kThreads, 0, cuda::as_stream(stream)>>>(
      expert_out, position, gate, out, T, k, D);
  cuda::check_launch("combine_kernel");
}

}  // namespace mr1
