// CUDA launchers of the optimizer updates and of the many-tensor scaling and filling (the squared norms
// use sum_squared_deviation_cuda and sum_squares_cuda).
// Raw device pointers; plain C++ header. n: the parameter's element count.
#pragma once

#include <cstdint>

namespace mr1 {

// p ← p · decay;  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;
// p ← p − step_size · m / (√v / root_correction2 + epsilon)     (the CPU's float formula, term by term)
void adamw_update_cuda(float* parameter, const float* grad, float* m, float* v, int64_t n, float decay, float beta1,
                       float beta2, float step_size, float root_correction2, float epsilon, void* stream);

// p ← p · decay;  d = g, or with a buffer b: b ← μ b + g, d = b;  p ← p − lr · d
void sgd_update_cuda(float* parameter, const float* grad, float* momentum_buffer, int64_t n, float decay,
                     float learning_rate, float momentum, void* stream);

// One parameter of the many-tensor AdamW update: its device arrays, value count n and decay (1 − lr·wd).
struct AdamWSlot {
  float* parameter;
  const float* grad;
  float* m;
  float* v;
  int64_t n;
  float decay;
};

// adamw_update_cuda on every slot (a host array of count), in one launch over chunks of them all; each
// value's arithmetic is adamw_update_cuda's.
void adamw_update_many_cuda(const AdamWSlot* slots, int64_t count, float beta1, float beta2, float step_size,
                            float root_correction2, float epsilon, void* stream);

// x ← factor · x for every array (device pointers, with their sizes, in host arrays of count), in one launch.
void scale_many_cuda(float* const* arrays, const int64_t* sizes, int64_t count, float factor, void* stream);
// x ← value for every array, likewise.
void fill_many_cuda(float* const* arrays, const int64_t* sizes, int64_t count, float value, void* stream);

}  // namespace mr1
