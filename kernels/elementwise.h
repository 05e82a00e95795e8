// Elementwise and layout helpers: sums, products, splitting and joining the feature axis.
#pragma once

#include "kernels/cuda_device.h"
#include "kernels/tensor.h"

namespace mr1 {

// a += b (same shape).
void add_inplace(Tensor& a, const Tensor& b);
// a += scale · b (same shape).
void add_scaled_inplace(Tensor& a, const Tensor& b, float scale);
Tensor add(const Tensor& a, const Tensor& b);
Tensor multiply(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, float factor);

// Split the last axis of x (..., F) at `at`: returns (..., at) and (..., F − at) as new tensors.
std::pair<Tensor, Tensor> split_last(const Tensor& x, int64_t at);
// Columns [begin, end) of the last axis, as a new tensor (..., end − begin).
Tensor columns(const Tensor& x, int64_t begin, int64_t end);
// Concatenate along the last axis: (..., Fa) and (..., Fb) give (..., Fa + Fb).
Tensor concat_last(const Tensor& a, const Tensor& b);
// The same for a, b, c: (..., Fa + Fb + Fc), one copy of each into the result.
Tensor concat_last(const Tensor& a, const Tensor& b, const Tensor& c);

// Rows of a (T, F) matrix: out[i] = x[rows[i]]   (gather), and out[rows[i]] += scale[i] · x[i] (scatter-add).
Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows);
void scatter_add_rows(Tensor& out, const Tensor& x, const std::vector<int64_t>& rows, const std::vector<float>* scale);

// A keep-mask of B·L bytes (1 = keep) with its device copy, made when a CUDA tensor first needs it: the
// blocks of a model pass share one copy, and a mask that keeps every row costs nothing. Refers to
// `values`, which must outlive it.
class RowMask {
 public:
  explicit RowMask(const std::vector<uint8_t>& values);
  const std::vector<uint8_t>& values() const { return values_; }
  bool keeps_all() const { return keeps_all_; }
  const uint8_t* device() const;

 private:
  const std::vector<uint8_t>& values_;
  bool keeps_all_;
  mutable cuda::DeviceBuffer device_;
};

// Zero the rows (tokens) of x (B, L, ...) whose mask entry (B·L) is 0.
void zero_masked_rows(Tensor& x, const RowMask& mask);
void zero_masked_rows(Tensor& x, const std::vector<uint8_t>& mask);

double sum(const Tensor& x);
double mean(const Tensor& x);
double standard_deviation(const Tensor& x);  // sample standard deviation (divides by n − 1, as torch.std)
float max_abs(const Tensor& x);

}  // namespace mr1
