// The linear layer on CUDA: cuBLAS GEMMs (float32, or TF32 tensor cores when cuda::tf32()), a bias kernel
// and the deterministic column sum of the bias gradient.
// Shape letters: T tokens, I inputs, O outputs. cuBLAS is column-major: a row-major (R, C) matrix is the
// column-major (C, R) matrix with leading dimension C, so each row-major product below is written
// transposed.
#include "kernels/cuda_device.cuh"
#include "kernels/linear_cuda.h"

namespace mr1 {

namespace {

// C (m × n, column-major, leading dimension ldc) = op(A) · op(B) + beta · C, float32 in and out.
void gemm(cudaStream_t stream, cublasOperation_t transpose_a, cublasOperation_t transpose_b, int64_t m, int64_t n,
          int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
          const char* what, float beta = 0.0f) {
  const float one = 1.0f;
  const cublasComputeType_t compute = cuda::tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cublasStatus_t status = cublasGemmEx(
      cuda::cublas_handle(stream), transpose_a, transpose_b, cuda::as_int(m, what), cuda::as_int(n, what),
      cuda::as_int(k, what), &one, a, CUDA_R_32F, cuda::as_int(lda, what), b, CUDA_R_32F, cuda::as_int(ldb, what),
      &beta, c, CUDA_R_32F, cuda::as_int(ldc, what), compute, CUBLAS_GEMM_DEFAULT);
  cuda::check_cublas(status, what);
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t T, int64_t O) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < T * O; i += stride) {
    y[i] += bias[i % O];
  }
}

}  // namespace

// y (T, O) = x (T, I) · Wᵀ:  column-major yᵀ (O × T) = W_cm(I × O)ᵀ · x_cm (I × T)
void linear_forward_cuda(const float* x, const float* weight, const float* bias, float* y, int64_t T, int64_t I,
                         int64_t O, void* stream) {
  if (T <= 0 || O <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  if (I == 0) {
    CUDA_CHECK(cudaMemsetAsync(y, 0, T * O * sizeof(float), s));
  } else {
    gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, O, T, I, weight, I, x, I, y, O, "cublasGemmEx (linear_forward)");
  }
  if (bias) {
    add_bias_kernel<<<cuda::blocks_for(T * O, 256, 65536), 256, 0, s>>>(y, bias, T, O);
    cuda::check_launch("add_bias_kernel");
  }
}

// grad_x (T, I) = dy (T, O) · W (O, I):   column-major dxᵀ (I × T) = W_cm (I × O) · dy_cm (O × T)
// grad_W (O, I) += dyᵀ · x:               column-major dWᵀ (I × O) += x_cm (I × T) · dy_cm(O × T)ᵀ
void linear_backward_cuda(const float* grad_y, const float* x, const float* weight, float* grad_x, float* grad_weight,
                          float* grad_bias, int64_t T, int64_t I, int64_t O, void* stream, bool add_input) {
  cudaStream_t s = cuda::as_stream(stream);
  // Empty products add nothing (grad_x is zero-filled by the caller, or keeps what it holds); with no
  // inputs (I = 0) the bias still takes Σ dy, as on the CPU.
  if (T <= 0 || O <= 0) return;
  if (I > 0) {
    if (grad_x) {
      gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, I, T, O, weight, I, grad_y, O, grad_x, I, "cublasGemmEx (linear dx)",
           add_input ? 1.0f : 0.0f);
    }
    gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, I, O, T, x, I, grad_y, O, grad_weight, I, "cublasGemmEx (linear dW)", 1.0f);
  }
  if (grad_bias) cuda::column_sums(cuda::MatrixEntries{grad_y, O}, T, O, grad_bias, true, s, "linear bias gradient");
}

}  // namespace mr1
