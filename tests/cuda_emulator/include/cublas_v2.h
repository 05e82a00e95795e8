// The CUDA emulator's cublas_v2.h: GEMMs computed on the CPU in double precision, the cuBLAS
// column-major conventions and argument checks, for the calls kernels/*.cu make.
#pragma once
#include "cuda_runtime.h"
typedef void* cublasHandle_t;
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N, CUBLAS_OP_T };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32 };
enum cudaDataType { CUDA_R_32F };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT };
inline const char* cublasGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS_EMULATED"; }
inline const char* cublasGetStatusString(cublasStatus_t) { return "emulated"; }
namespace emu {
// Column-major C (m × n) = alpha op(A) op(B) + beta C, in double (not counted: the callers count).
inline cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha,
                           const void* A, int lda, const void* B, int ldb, const void* beta, void* C, int ldc) {
  const float* a = static_cast<const float*>(A);
  const float* b = static_cast<const float*>(B);
  float* c = static_cast<float*>(C);
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k) || ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double total = 0;
      for (int p = 0; p < k; ++p) {
        const double av = ta == CUBLAS_OP_N ? a[i + p * lda] : a[p + i * lda];
        const double bv = tb == CUBLAS_OP_N ? b[p + j * ldb] : b[j + p * ldb];
        total += av * bv;
      }
      c[i + j * ldc] = static_cast<float>(al * total + (be == 0 ? 0.0 : be * c[i + j * ldc]));
    }
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace emu
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void* alpha, const void* A, cudaDataType, int lda, const void* B, cudaDataType,
                                   int ldb, const void* beta, void* C, cudaDataType, int ldc, cublasComputeType_t,
                                   cublasGemmAlgo_t) {
  ++emu::counters().gemms;
  return emu::gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
typedef cudaDataType cudaDataType_t;
// Grouped GEMM: host arrays of sizes; the pointer arrays are "device" memory (host here).
inline cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t h, const cublasOperation_t ta[], const cublasOperation_t tb[],
    const int m[], const int n[], const int k[], const void* alpha, const void* const A[], cudaDataType at, const int lda[],
    const void* const B[], cudaDataType bt, const int ldb[], const void* beta, void* const C[], cudaDataType ct,
    const int ldc[], int group_count, const int group_size[], cublasComputeType_t compute) {
  // EMU_REFUSE_GROUPED_GEMM=1: refused, as by a cuBLAS whose tables lack it, so that the caller's fallback
  // (one GEMM per group) runs.
  static const bool refuse = std::getenv("EMU_REFUSE_GROUPED_GEMM") != nullptr;
  if (refuse) return CUBLAS_STATUS_NOT_SUPPORTED;
  int p = 0;
  ++emu::counters().grouped_gemms;
  for (int g = 0; g < group_count; ++g)
    for (int i = 0; i < group_size[g]; ++i, ++p) {
      cublasStatus_t s = emu::gemm(ta[g], tb[g], m[g], n[g], k[g], static_cast<const float*>(alpha) + g, A[p], lda[g],
                                   B[p], ldb[g], static_cast<const float*>(beta) + g, C[p], ldc[g]);
      if (s != CUBLAS_STATUS_SUCCESS) return s;
    }
  return CUBLAS_STATUS_SUCCESS;
}
