// Linear layer on the CPU: Eigen GEMMs over the (T, I) matrix of input rows.
// Shape letters: T tokens (all leading axes flattened), I input features, O output features.
#include "kernels/linear.h"

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/linear_cuda.h"

namespace mr1 {

namespace {
// Up to this many input rows (decoding), the forward splits the output features into pieces; above, the
// rows. The backward splits dx by rows and dW by its rows (the output features).
constexpr int64_t kFewRows = 16;
constexpr int64_t kFeaturePieces = 4, kRowPiece = 256, kWeightRowPiece = 64;
}  // namespace

// y (..., O) = x (..., I) · weightᵀ (O, I) + bias (O)      (no bias when `bias` is null or undefined)
Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  if (bias && !bias->defined()) bias = nullptr;
  check_shape(weight, {-1, -1}, "linear_forward: weight");
  const int64_t outputs = weight.size(0);
  check_last_axis(x, weight.size(1), "linear_forward: x");
  if (bias) check_shape(*bias, {outputs}, "linear_forward: bias");
  if (common_device("linear_forward", {&x, &weight, bias}) == Device::cuda) {
    // Every value is written when there are inputs to sum (I > 0).
    Tensor y = weight.size(1) > 0 ? Tensor::empty(with_last_axis(x.shape(), outputs), Device::cuda)
                                  : Tensor(with_last_axis(x.shape(), outputs), Device::cuda);
    linear_forward_cuda(x.data(), weight.data(), bias ? bias->data() : nullptr, y.data(), row_count(x), weight.size(1),
                        outputs, cuda::stream());
    return y;
  }

  Tensor y = Tensor::empty(with_last_axis(x.shape(), outputs));  // Eigen zeroes it for I = 0
  MatrixMap y_rows = matrix_of_rows(y);  // (T, O)
  const ConstMatrixMap x_rows = matrix_of_rows(x), w_rows = matrix_of_rows(weight);
  const int64_t T = row_count(x), work = T * outputs * weight.size(1);
  if (T <= kFewRows) {
    // A fixed number of pieces, 16 features or more each (a small product's calls cost more than it); in
    // parallel from 64K weights (decoding reads them all for a few rows).
    const int64_t piece = std::max<int64_t>(16, (outputs + kFeaturePieces * 16 - 1) / (kFeaturePieces * 16) * 16);
    const bool parallel = outputs * weight.size(1) >= kParallelMinimumWork * 4;
    for_each_piece(outputs, piece, parallel, [&](int64_t begin, int64_t count) {
      y_rows.middleCols(begin, count).noalias() = x_rows * w_rows.middleRows(begin, count).transpose();
    });
  } else {
    for_each_piece(T, kRowPiece, work >= kParallelProductWork, [&](int64_t begin, int64_t count) {
      y_rows.middleRows(begin, count).noalias() = x_rows.middleRows(begin, count) * w_rows.transpose();
    });
  }
  if (bias) y_rows.rowwise() += row_vector(*bias);
  return y;
}

// dL/dx (..., I) = dy · weight,  dL/dW (O, I) = dyᵀ · x,  dL/db (O) = Σ_t dy[t]
LinearGrads linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                            bool need_input) {
  check_shape(weight, {-1, -1}, "linear_backward: weight");
  LinearGrads grads;
  grads.weight = Tensor(weight.shape(), weight.device());
  if (has_bias) grads.bias = Tensor({weight.size(0)}, weight.device());
  grads.input = linear_backward_accumulate(grad_y, x, weight, grads.weight, has_bias ? &grads.bias : nullptr,
                                           need_input);
  return grads;
}

namespace {

// dL/dx (..., I) = dy · weight into *grad_x (added to it with add_input; skipped when null),
// grad_weight (O, I) += dyᵀ · x,  grad_bias (O) += Σ_t dy[t]
void backward_into(Device device, const Tensor& grad_y, const Tensor& x, const Tensor& weight, Tensor& grad_weight,
                   Tensor* grad_bias, Tensor* grad_x, bool add_input) {
  const int64_t outputs = weight.size(0);
  if (device == Device::cuda) {
    linear_backward_cuda(grad_y.data(), x.data(), weight.data(), grad_x ? grad_x->data() : nullptr,
                         grad_weight.data(), grad_bias ? grad_bias->data() : nullptr, row_count(x), weight.size(1),
                         outputs, cuda::stream(), add_input);
    return;
  }
  const ConstMatrixMap dy = matrix_of_rows(grad_y);  // (T, O)
  const ConstMatrixMap w = matrix_of_rows(weight), x_rows = matrix_of_rows(x);
  const int64_t T = row_count(x);
  const bool parallel = T * outputs * weight.size(1) >= kParallelProductWork;
  if (grad_x) {
    MatrixMap dx = matrix_of_rows(*grad_x);
    for_each_piece(T, kRowPiece, parallel, [&](int64_t begin, int64_t count) {
      if (add_input) {
        dx.middleRows(begin, count).noalias() += dy.middleRows(begin, count) * w;
      } else {
        dx.middleRows(begin, count).noalias() = dy.middleRows(begin, count) * w;
      }
    });
  }
  MatrixMap dw = matrix_of_rows(grad_weight);
  for_each_piece(outputs, kWeightRowPiece, parallel, [&](int64_t begin, int64_t count) {
    dw.middleRows(begin, count).noalias() += dy.middleCols(begin, count).transpose() * x_rows;
  });
  if (grad_bias) row_vector(*grad_bias) += dy.colwise().sum();
}

// The shape checks of the backward; returns the device all the tensors share.
Device check_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& grad_weight,
                      const Tensor* grad_bias, const Tensor* grad_x) {
  check_shape(weight, {-1, -1}, "linear_backward: weight");
  const int64_t outputs = weight.size(0);
  check_last_axis(x, weight.size(1), "linear_backward: x");
  check_shape(grad_y, with_last_axis(x.shape(), outputs), "linear_backward: grad_y");
  check_shape(grad_weight, weight.shape(), "linear_backward: grad_weight");
  if (grad_bias) check_shape(*grad_bias, {outputs}, "linear_backward: grad_bias");
  if (grad_x) check_shape(*grad_x, x.shape(), "linear_backward: grad_x");
  return common_device("linear_backward", {&grad_y, &x, &weight, &grad_weight, grad_bias, grad_x});
}

}  // namespace

Tensor linear_backward_accumulate(const Tensor& grad_y, const Tensor& x, const Tensor& weight, Tensor& grad_weight,
                                  Tensor* grad_bias, bool need_input) {
  const Device device = check_backward(grad_y, x, weight, grad_weight, grad_bias, nullptr);
  Tensor grad_x;
  // Every value of dx is written when there are outputs to sum over (O > 0).
  if (need_input) grad_x = weight.size(0) > 0 ? Tensor::empty(x.shape(), device) : Tensor(x.shape(), device);
  backward_into(device, grad_y, x, weight, grad_weight, grad_bias, need_input ? &grad_x : nullptr, false);
  return grad_x;
}

void linear_backward_add(const Tensor& grad_y, const Tensor& x, const Tensor& weight, Tensor& grad_weight,
                         Tensor* grad_bias, Tensor& grad_x) {
  const Device device = check_backward(grad_y, x, weight, grad_weight, grad_bias, &grad_x);
  backward_into(device, grad_y, x, weight, grad_weight, grad_bias, &grad_x, true);
}

}  // namespace mr1
