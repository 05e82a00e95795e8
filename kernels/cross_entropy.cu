// Cross-entropy on CUDA, fused with its gradient: one block per row (T rows), the row's arg-max (lowest
// index on ties), its exp-sum in double, its loss, and the gradient written in the same pass.
// Shape letters: T positions, V classes.
#include <cmath>

#include "kernels/cross_entropy_cuda.h"
#include "kernels/cuda_device.cuh"

namespace mr1 {

namespace {

constexpr int kThreads = 256;

// loss[t] = largest + log Σ_j exp(x[j] − largest) − x[target];  grad[t, j] = (p_j − [j = target]) · inverse_scored
__global__ void cross_entropy_kernel(const float* logits, const int32_t* targets, float* grad_logits, double* row_loss,
                                     int32_t* row_correct, int64_t V, double inverse_scored) {
  __shared__ float best_values[kThreads];
  __shared__ int64_t best_indices[kThreads];
  __shared__ double scratch[32];
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  if (target < 0) {
    if (threadIdx.x == 0) {
      row_loss[t] = 0;
      row_correct[t] = 0;
    }
    return;
  }
  const float* row = logits + t * V;

  // Arg-max: each thread's first maximum over its columns, then the block's (lowest index on ties).
  float best_value = -INFINITY;
  int64_t best_index = -1;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    if (best_index < 0 || row[j] > best_value) {
      best_value = row[j];
      best_index = j;
    }
  }
  best_values[threadIdx.x] = best_value;
  best_indices[threadIdx.x] = best_index;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) {
      const float other_value = best_values[threadIdx.x + width];
      const int64_t other_index = best_indices[threadIdx.x + width];
      const int64_t mine = best_indices[threadIdx.x];
      const bool take = other_index >= 0 && (mine < 0 || other_value > best_values[threadIdx.x] ||
                                             (other_value == best_values[threadIdx.x] && other_index < mine));
      if (take) {
        best_values[threadIdx.x] = other_value;
        best_indices[threadIdx.x] = other_index;
      }
    }
    __syncthreads();
  }
  const int64_t best = best_indices[0];
  const double largest = row[best];  // row[j] − largest in double, as on the CPU

  double exp_total = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) exp_total += exp(static_cast<double>(row[j]) - largest);
  exp_total = cuda::block_sum(exp_total, scratch);
  if (threadIdx.x == 0) {
    row_loss[t] = largest + log(exp_total) - row[target];
    row_correct[t] = best == target ? 1 : 0;
  }
  if (grad_logits) {
    float* grad = grad_logits + t * V;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const double probability = exp(static_cast<double>(row[j]) - largest) / exp_total;
      grad[j] = static_cast<float>((probability - (j == target ? 1.0 : 0.0)) * inverse_scored);
    }
  }
}

}  // namespace

void cross_entropy_cuda(const float* logits, const int32_t* targets, float* grad_logits, double* row_loss,
                        int32_t* row_correct, int64_t T, int64_t V, double inverse_scored, void* stream) {
  if (T <= 0 || V <= 0) return;
  cross_entropy_kernel<<<static_cast<unsigned>(T), kThreads, 0, cuda::as_stream(stream)>>>(
      logits, targets, grad_logits, row_loss, row_correct, V, inverse_scored);
  cuda::check_launch("cross_entropy_kernel");
}

}  // namespace mr1
