// The grouped linear layer on the CPU: one Eigen GEMM per group over its block of rows (no copies).
// Shape letters: R rows, G groups, I input features, O output features.
#include "kernels/grouped_linear.h"

#include <string>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/grouped_linear_cuda.h"

namespace mr1 {

namespace {

// Checks offsets, weights and biases against x (R, I); returns O.
int64_t check_groups(const char* op, const Tensor& x, const std::vector<int64_t>& offsets,
                     const std::vector<const Tensor*>& weights, size_t bias_count) {
  const std::string name(op);
  check_shape(x, {-1, -1}, name + ": x");
  const size_t groups = weights.size();
  if (groups == 0) throw ShapeError(name + ": expected at least one group's weight, found none");
  if (offsets.size() != groups + 1) {
    throw ShapeError(name + ": offsets: expected G + 1 = " + std::to_string(groups + 1) + " entries for " +
                     std::to_string(groups) + " groups, found " + std::to_string(offsets.size()));
  }
  if (offsets.front() != 0 || offsets.back() != x.size(0)) {
    throw ShapeError(name + ": offsets: expected to run from 0 to the R = " + std::to_string(x.size(0)) +
                     " rows of x, found " + std::to_string(offsets.front()) + " to " + std::to_string(offsets.back()));
  }
  for (size_t g = 0; g < groups; ++g) {
    if (offsets[g + 1] < offsets[g]) {
      throw ShapeError(name + ": offsets: expected non-decreasing values, found " + std::to_string(offsets[g]) +
                       " then " + std::to_string(offsets[g + 1]) + " at group " + std::to_string(g));
    }
  }
  if (bias_count != 0 && bias_count != groups) {
    throw ShapeError(name + ": biases: expected one per group (" + std::to_string(groups) + ") or none, found " +
                     std::to_string(bias_count));
  }
  const int64_t outputs = weights[0]->rank() == 2 ? weights[0]->size(0) : -1;
  for (size_t g = 0; g < groups; ++g) {
    check_shape(*weights[g], {outputs, x.size(1)}, name + ": weight of group " + std::to_string(g));
  }
  return outputs;
}

// The device of x and every weight (and gradient); throws naming the op when they differ.
Device group_device(const char* op, const Tensor& x, const Tensor* other, const std::vector<const Tensor*>& weights) {
  const Device device = common_device(op, {&x, other});
  for (const Tensor* weight : weights) {
    if (weight->device() != device) throw std::invalid_argument(std::string(op) + ": inputs on different devices");
  }
  return device;
}

template <typename TensorPointer>
std::vector<float*> data_pointers(const std::vector<TensorPointer>& tensors) {
  std::vector<float*> pointers;
  for (const auto* tensor : tensors) pointers.push_back(tensor ? const_cast<float*>(tensor->data()) : nullptr);
  return pointers;
}

std::vector<const float*> read_only(const std::vector<float*>& pointers) { return {pointers.begin(), pointers.end()}; }
std::vector<const Tensor*> read_only(const std::vector<Tensor*>& tensors) { return {tensors.begin(), tensors.end()}; }

// The pieces of a group's products (see for_each_piece): rows of y and dx, rows of dW.
constexpr int64_t kRowPiece = 256, kWeightRowPiece = 64;

}  // namespace

// y_g (R_g, O) = x_g (R_g, I) · W_gᵀ + b_g      for each group g's block of rows
Tensor grouped_linear_forward(const Tensor& x, const std::vector<int64_t>& offsets,
                              const std::vector<const Tensor*>& weights, const std::vector<const Tensor*>& biases) {
  const int64_t outputs = check_groups("grouped_linear_forward", x, offsets, weights, biases.size());
  for (size_t g = 0; g < biases.size(); ++g) {
    check_shape(*biases[g], {outputs}, "grouped_linear_forward: bias of group " + std::to_string(g));
  }
  const Device device = group_device("grouped_linear_forward", x, nullptr, weights);
  group_device("grouped_linear_forward", x, nullptr, biases);
  Tensor y = Tensor::empty({x.size(0), outputs}, device);
  if (device == Device::cuda) {
    grouped_linear_forward_cuda(x.data(), offsets, read_only(data_pointers(weights)), read_only(data_pointers(biases)),
                                y.data(), x.size(1), outputs, cuda::stream());
    return y;
  }
  const ConstMatrixMap x_rows = matrix_of_rows(x);
  MatrixMap y_rows = matrix_of_rows(y);
  for (size_t g = 0; g < weights.size(); ++g) {
    const int64_t first = offsets[g], count = offsets[g + 1] - offsets[g];
    if (count == 0) continue;
    const ConstMatrixMap w = matrix_of_rows(*weights[g]);
    const bool parallel = count * outputs * x.size(1) >= kParallelProductWork;
    for_each_piece(count, kRowPiece, parallel, [&](int64_t begin, int64_t rows) {
      y_rows.middleRows(first + begin, rows).noalias() = x_rows.middleRows(first + begin, rows) * w.transpose();
    });
    if (!biases.empty()) y_rows.middleRows(first, count).rowwise() += row_vector(*biases[g]);
  }
  return y;
}

// dL/dx_g = dy_g · W_g,  dL/dW_g += dy_gᵀ · x_g,  dL/db_g += Σ_{r in g} dy[r]
Tensor grouped_linear_backward(const Tensor& grad_y, const Tensor& x, const std::vector<int64_t>& offsets,
                               const std::vector<const Tensor*>& weights, const std::vector<Tensor*>& grad_weights,
                               const std::vector<Tensor*>& grad_biases, bool need_input) {
  const int64_t outputs = check_groups("grouped_linear_backward", x, offsets, weights, grad_biases.size());
  check_shape(grad_y, {x.size(0), outputs}, "grouped_linear_backward: grad_y");
  if (grad_weights.size() != weights.size()) {
    throw ShapeError("grouped_linear_backward: grad_weights: expected one per group (" +
                     std::to_string(weights.size()) + "), found " + std::to_string(grad_weights.size()));
  }
  const Device device = group_device("grouped_linear_backward", x, &grad_y, weights);
  group_device("grouped_linear_backward", x, nullptr, read_only(grad_weights));
  group_device("grouped_linear_backward", x, nullptr, read_only(grad_biases));
  for (size_t g = 0; g < weights.size(); ++g) {
    check_shape(*grad_weights[g], weights[g]->shape(), "grouped_linear_backward: grad_weight of group " +
                                                           std::to_string(g));
    if (!grad_biases.empty()) {
      check_shape(*grad_biases[g], {outputs}, "grouped_linear_backward: grad_bias of group " + std::to_string(g));
    }
  }
  Tensor grad_x;
  if (need_input) grad_x = Tensor(x.shape(), device);
  if (device == Device::cuda) {
    grouped_linear_backward_cuda(grad_y.data(), x.data(), offsets, read_only(data_pointers(weights)),
                                 need_input ? grad_x.data() : nullptr, data_pointers(grad_weights),
                                 data_pointers(grad_biases), x.size(1), outputs, cuda::stream());
    return grad_x;
  }
  const ConstMatrixMap dy = matrix_of_rows(grad_y), x_rows = matrix_of_rows(x);
  for (size_t g = 0; g < weights.size(); ++g) {
    const int64_t first = offsets[g], count = offsets[g + 1] - offsets[g];
    if (count == 0) continue;
    const auto dy_group = dy.middleRows(first, count);
    const ConstMatrixMap w = matrix_of_rows(*weights[g]);
    const bool parallel = count * outputs * x.size(1) >= kParallelProductWork;
    if (need_input) {
      MatrixMap dx = matrix_of_rows(grad_x);
      for_each_piece(count, kRowPiece, parallel, [&](int64_t begin, int64_t rows) {
        dx.middleRows(first + begin, rows).noalias() = dy.middleRows(first + begin, rows) * w;
      });
    }
    MatrixMap dw = matrix_of_rows(*grad_weights[g]);
    const auto x_group = x_rows.middleRows(first, count);
    for_each_piece(outputs, kWeightRowPiece, parallel, [&](int64_t begin, int64_t rows) {
      dw.middleRows(begin, rows).noalias() += dy_group.middleCols(begin, rows).transpose() * x_group;
    });
    if (!grad_biases.empty()) row_vector(*grad_biases[g]) += dy_group.colwise().sum();
  }
  return grad_x;
}

}  // namespace mr1
