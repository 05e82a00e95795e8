// CUDA launchers of the activations and the softmax family. Raw device pointers; plain C++ header.
// Shape letters: n values, T rows, F features (the last axis).
#pragma once

#include <cstdint>

namespace mr1 {

void gelu_forward_cuda(const float* x, float* y, int64_t n, void* stream);
void gelu_backward_cuda(const float* grad_y, const float* x, float* grad_x, int64_t n, void* stream);
void silu_forward_cuda(const float* x, float* y, int64_t n, void* stream);
void silu_backward_cuda(const float* grad_y, const float* x, float* grad_x, int64_t n, void* stream);
void sigmoid_forward_cuda(const float* x, float* y, int64_t n, void* stream);

// x, y, grad_y, grad_x: (T, F); out: (T)
void softmax_forward_cuda(const float* x, float* y, int64_t T, int64_t F, void* stream);
void softmax_backward_cuda(const float* grad_y, const float* y, float* grad_x, int64_t T, int64_t F, void* stream);
void logsumexp_forward_cuda(const float* x, float* out, int64_t T, int64_t F, void* stream);

}  // namespace mr1
