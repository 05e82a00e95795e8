// The grouped linear layer on CUDA: each product is one grouped cuBLAS GEMM over every non-empty group
// (cublasGemmGroupedBatchedEx, one problem per group: the groups differ in their number of rows), a bias
// kernel that finds each row's group, and deterministic per-group column sums for the bias gradients.
// Shape letters: R rows, G groups, I inputs, O outputs. cuBLAS is column-major: the row-major (R, C)
// matrix is the column-major (C, R) one with leading dimension C, so each product is written transposed,
// as in kernels/linear.cu.
#include <cstdio>
#include <vector>

#include "kernels/cuda_device.cuh"
#include "kernels/grouped_linear_cuda.h"

namespace mr1 {

namespace {

// The problems of one grouped GEMM, C_p (m × n_p) = op(A_p) · op(B_p) + beta · C_p, column-major. All
// problems share the operations, m, k's role and the leading dimensions; n (or k) varies with the
// group's row count.
class GroupedGemm {
 public:
  GroupedGemm(cublasOperation_t transpose_a, cublasOperation_t transpose_b, float beta, const char* what)
      : transpose_a_(transpose_a), transpose_b_(transpose_b), beta_(beta), what_(what) {}

  void add(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
           int64_t ldc) {
    m_.push_back(cuda::as_int(m, what_));
    n_.push_back(cuda::as_int(n, what_));
    k_.push_back(cuda::as_int(k, what_));
    lda_.push_back(cuda::as_int(lda, what_));
    ldb_.push_back(cuda::as_int(ldb, what_));
    ldc_.push_back(cuda::as_int(ldc, what_));
    a_.push_back(a);
    b_.push_back(b);
    c_.push_back(c);
  }

  // The pointer arrays A | B | C (3 per problem), for the caller to upload with its other tables.
  std::vector<const void*> pointers() const {
    std::vector<const void*> all(a_.begin(), a_.end());
    all.insert(all.end(), b_.begin(), b_.end());
    all.insert(all.end(), c_.begin(), c_.end());
    return all;
  }

  // a: a device copy of pointers().
  void run(cudaStream_t stream, const void* const* a) const {
    const int problems = static_cast<int>(a_.size());
    if (problems == 0) return;
    const cublasComputeType_t compute = cuda::tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    // Per group (one problem each): the operations, alpha, beta and the size 1 live on the host; the
    // pointer arrays on the device.
    const std::vector<cublasOperation_t> transpose_a(problems, transpose_a_), transpose_b(problems, transpose_b_);
    const std::vector<float> alpha(problems, 1.0f), beta(problems, beta_);
    const std::vector<int> group_size(problems, 1);
    const cublasStatus_t status = cublasGemmGroupedBatchedEx(
        cuda::cublas_handle(stream), transpose_a.data(), transpose_b.data(), m_.data(), n_.data(), k_.data(),
        alpha.data(), a, CUDA_R_32F, lda_.data(), a + problems, CUDA_R_32F, ldb_.data(), beta.data(),
        const_cast<void* const*>(a + 2 * problems), CUDA_R_32F, ldc_.data(), problems, group_size.data(), compute);
    // A cuBLAS that refuses the grouped GEMM for this compute type (NOT_SUPPORTED; with TF32, any refusal,
    // since the TF32 compute type is the one its tables may lack) gets one GEMM per group instead, said once.
    const bool refused = status == CUBLAS_STATUS_NOT_SUPPORTED ||
                         (status != CUBLAS_STATUS_SUCCESS && compute == CUBLAS_COMPUTE_32F_FAST_TF32);
    if (!refused) return cuda::check_cublas(status, what_);
    static bool said = false;
    if (!said) {
      std::fprintf(stderr, "warning: %s: cublasGemmGroupedBatchedEx refused (%s); one GEMM per group instead\n",
                   what_, cublasGetStatusName(status));
      said = true;
    }
    for (int p = 0; p < problems; ++p) {
      cuda::check_cublas(cublasGemmEx(cuda::cublas_handle(stream), transpose_a_, transpose_b_, m_[p], n_[p], k_[p],
                                      &alpha[p], a_[p], CUDA_R_32F, lda_[p], b_[p], CUDA_R_32F, ldb_[p], &beta[p],
                                      c_[p], CUDA_R_32F, ldc_[p], compute, CUBLAS_GEMM_DEFAULT),
                         what_);
    }
  }

 private:
  cublasOperation_t transpose_a_, transpose_b_;
  float beta_;
  const char* what_;
  std::vector<int> m_, n_, k_, lda_, ldb_, ldc_;
  std::vector<const void*> a_, b_;
  std::vector<void*> c_;
};

// The group of row r: the g with offsets[g] <= r < offsets[g+1] (binary search; empty groups skipped).
__device__ __forceinline__ int group_of_row(const int64_t* offsets, int groups, int64_t r) {
  int low = 0, high = groups - 1;
  while (low < high) {
    const int middle = (low + high + 1) / 2;
    if (offsets[middle] <= r) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

// y[r, o] += biases[g(r)][o]      y (R, O); biases: G device pointers
__global__ void grouped_bias_kernel(float* y, const float* const* biases, const int64_t* offsets, int groups,
                                    int64_t R, int64_t O) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < R * O; i += stride) {
    const float* bias = biases[group_of_row(offsets, groups, i / O)];
    y[i] += bias[i % O];
  }
}

constexpr int kStripe = 32, kRowsPerPass = 8;

// out[g][o] += Σ_{offsets[g] <= r < offsets[g+1]} dy[r, o], summed in double in a fixed order.
// Grid (column stripes of 32, G); block (32, 8): each thread sums every 8th row of its column.
__global__ void grouped_column_sums_kernel(const float* dy, const int64_t* offsets, int64_t O,
                                           float* const* out) {
  __shared__ double sums[kRowsPerPass][kStripe];
  const int g = blockIdx.y;
  const int64_t column = static_cast<int64_t>(blockIdx.x) * kStripe + threadIdx.x;
  double total = 0;
  if (column < O) {
    for (int64_t r = offsets[g] + threadIdx.y; r < offsets[g + 1]; r += kRowsPerPass) total += dy[r * O + column];
  }
  sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && column < O) {
    double sum = 0;
    for (int pass = 0; pass < kRowsPerPass; ++pass) sum += sums[pass][threadIdx.x];
    out[g][column] += static_cast<float>(sum);
  }
}

int64_t row_total(const std::vector<int64_t>& offsets) { return offsets.back(); }

}  // namespace

// y_g (R_g, O) = x_g · W_gᵀ:  column-major y_gᵀ (O × R_g) = W_cm (I × O)ᵀ · x_g,cm (I × R_g)
void grouped_linear_forward_cuda(const float* x, const std::vector<int64_t>& offsets,
                                 const std::vector<const float*>& weights, const std::vector<const float*>& biases,
                                 float* y, int64_t I, int64_t O, void* stream) {
  const int64_t R = row_total(offsets);
  if (R <= 0 || O <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  GroupedGemm gemm(CUBLAS_OP_T, CUBLAS_OP_N, 0.0f, "cublasGemmGroupedBatchedEx (grouped_linear_forward)");
  for (size_t g = 0; I > 0 && g + 1 < offsets.size(); ++g) {
    const int64_t rows = offsets[g + 1] - offsets[g];
    if (rows > 0) gemm.add(O, rows, I, weights[g], I, x + offsets[g] * I, I, y + offsets[g] * O, O);
  }
  // One copy for the GEMM's pointers and the bias kernel's tables (none without biases).
  cuda::DeviceBuffer tables;
  const auto [pointers, device_offsets, device_biases] = cuda::upload_together(
      tables, gemm.pointers(), biases.empty() ? std::vector<int64_t>() : offsets, biases);
  if (I == 0) {
    CUDA_CHECK(cudaMemsetAsync(y, 0, R * O * sizeof(float), s));
  } else {
    gemm.run(s, pointers);
  }
  if (!biases.empty()) {
    grouped_bias_kernel<<<cuda::blocks_for(R * O, 256, 65536), 256, 0, s>>>(y, device_biases, device_offsets,
                                                                             static_cast<int>(biases.size()), R, O);
    cuda::check_launch("grouped_bias_kernel");
  }
}

// grad_x_g (R_g, I) = dy_g · W_g:     column-major dx_gᵀ (I × R_g) = W_cm (I × O) · dy_g,cm (O × R_g)
// grad_W_g (O, I) += dy_gᵀ · x_g:     column-major dW_gᵀ (I × O) += x_g,cm (I × R_g) · dy_g,cm (O × R_g)ᵀ
void grouped_linear_backward_cuda(const float* grad_y, const float* x, const std::vector<int64_t>& offsets,
                                  const std::vector<const float*>& weights, float* grad_x,
                                  const std::vector<float*>& grad_weights, const std::vector<float*>& grad_biases,
                                  int64_t I, int64_t O, void* stream) {
  const int64_t R = row_total(offsets);
  // Empty products add nothing (grad_x is zero-filled); with no inputs (I = 0) the biases still take Σ dy.
  if (R <= 0 || O <= 0) return;
  cudaStream_t s = cuda::as_stream(stream);
  GroupedGemm input(CUBLAS_OP_N, CUBLAS_OP_N, 0.0f, "cublasGemmGroupedBatchedEx (grouped_linear dx)");
  GroupedGemm weight(CUBLAS_OP_N, CUBLAS_OP_T, 1.0f, "cublasGemmGroupedBatchedEx (grouped_linear dW)");
  for (size_t g = 0; g + 1 < offsets.size(); ++g) {
    const int64_t rows = offsets[g + 1] - offsets[g];
    if (rows == 0 || I == 0) continue;
    if (grad_x) input.add(I, rows, O, weights[g], I, grad_y + offsets[g] * O, O, grad_x + offsets[g] * I, I);
    weight.add(I, O, rows, x + offsets[g] * I, I, grad_y + offsets[g] * O, O, grad_weights[g], I);
  }
  // One copy for both GEMMs' pointers and the bias gradients' tables.
  cuda::DeviceBuffer tables;
  const auto [input_pointers, weight_pointers, device_offsets, device_out] =
      cuda::upload_together(tables, input.pointers(), weight.pointers(),
                            grad_biases.empty() ? std::vector<int64_t>() : offsets, grad_biases);
  input.run(s, input_pointers);
  weight.run(s, weight_pointers);
  if (!grad_biases.empty()) {
    const int groups = static_cast<int>(grad_biases.size());
    const unsigned stripes = static_cast<unsigned>((O + kStripe - 1) / kStripe);
    grouped_column_sums_kernel<<<dim3(stripes, static_cast<unsigned>(groups)), dim3(kStripe, kRowsPerPass), 0, s>>>(
        grad_y, device_offsets, O, device_out);
    cuda::check_launch("grouped_column_sums_kernel");
  }
}

}  // namespace mr1
