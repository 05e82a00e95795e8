// The rotary positional encoding on CUDA: the (L, H) table of cos θ and sin θ computed in double as on
// the CPU, then one thread per pair (x[j], x[j + H]) of a row. Shape letters: B batch, L length,
// D features (even), H = D/2 pairs.
#include <cmath>

#include "kernels/cuda_device.cuh"
#include "kernels/rotary_cuda.h"

namespace mr1 {

namespace {

constexpr double kRotaryBase = 10000.0;
constexpr int kThreads = 256;

// cosines[l, j] = cos(sign · (start + l) · 10000^(−2j/D)), sines likewise, for j < H.
__global__ void rotary_table_kernel(float* cosines, float* sines, int64_t L, int64_t D, int64_t start_position,
                                    double sign) {
  const int64_t H = D / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= L * H) return;
  const int64_t l = i / H, j = i % H;
  const double frequency = pow(kRotaryBase, -2.0 * static_cast<double>(j) / static_cast<double>(D));
  const double angle = sign * static_cast<double>(start_position + l) * frequency;
  cosines[i] = static_cast<float>(cos(angle));
  sines[i] = static_cast<float>(sin(angle));
}

// In pairs (a, b) = (x[j], x[j + H]):  y[j] = a cos − b sin,  y[j + H] = b cos + a sin.
__global__ void rotary_apply_kernel(const float* x, float* y, const float* cosines, const float* sines, int64_t rows,
                                    int64_t L, int64_t D) {
  const int64_t H = D / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * H; i += stride) {
    const int64_t row = i / H, j = i % H;
    const int64_t angle = (row % L) * H + j;
    const float c = cosines[angle], s = sines[angle];
    const float a = x[row * D + j], b = x[row * D + j + H];
    y[row * D + j] = a * c - b * s;
    y[row * D + j + H] = b * c + a * s;
  }
}

}  // namespace

void rotate_cuda(const float* x, float* y, int64_t B, int64_t L, int64_t D, int64_t start_position, double sign,
                 void* stream) {
  const int64_t H = D / 2;
  if (B <= 0 || L <= 0 || H <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  cuda::DeviceBuffer cosines(static_cast<size_t>(L * H) * sizeof(float)), sines(cosines.bytes());
  rotary_table_kernel<<<cuda::blocks_for(L * H, kThreads, INT32_MAX), kThreads, 0, s>>>(
      cosines.as<float>(), sines.as<float>(), L, D, start_position, sign);
  cuda::check_launch("rotary_table_kernel");
  rotary_apply_kernel<<<cuda::blocks_for(B * L * H, kThreads, 65536), kThreads, 0, s>>>(x, y, cosines.as<float>(),
                                                                                        sines.as<float>(), B * L, L, D);
  cuda::check_launch("rotary_apply_kernel");
}

}  // namespace mr1
