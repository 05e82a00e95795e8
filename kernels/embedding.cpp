// Token embedding on the CPU: a row lookup forward, a scatter-add of rows backward.
// Shape letters: B batch, L length, V vocab, D features.
#include "kernels/embedding.h"

#include <stdexcept>
#include <string>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/elementwise_cuda.h"

namespace mr1 {

namespace {

// Throws std::out_of_range naming the first id outside [0, V), its position (b, l) and V.
void check_ids(const char* op, const std::vector<int32_t>& ids, int64_t length, int64_t vocab_size) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      const int64_t position = static_cast<int64_t>(i);
      throw std::out_of_range(std::string(op) + ": token id " + std::to_string(ids[i]) + " at position " +
                              std::to_string(position) + " (b " + std::to_string(position / length) + ", l " +
                              std::to_string(position % length) + ") is outside the vocabulary [0, " +
                              std::to_string(vocab_size) + ")");
    }
  }
}

}  // namespace

// out[b, l] = table[ids[b·L + l]]     table (V, D) → out (B, L, D)
Tensor embedding_forward(const std::vector<int32_t>& ids, int64_t batch, int64_t length, const Tensor& table) {
  check_shape(table, {-1, -1}, "embedding_forward: table");
  if (batch < 0 || length < 0 || static_cast<int64_t>(ids.size()) != batch * length) {
    throw ShapeError("embedding_forward: ids: expected B*L = " + std::to_string(batch) + "*" + std::to_string(length) +
                     " values, found " + std::to_string(ids.size()));
  }
  check_ids("embedding_forward", ids, length, table.size(0));
  const int64_t features = table.size(1);
  if (common_device("embedding_forward", {&table}) == Device::cuda) {
    // A row gather of the table (the launcher of gather_rows).
    Tensor out = Tensor::empty({batch, length, features}, Device::cuda);
    const cuda::DeviceBuffer rows = cuda::upload(std::vector<int64_t>(ids.begin(), ids.end()));
    gather_rows_cuda(table.data(), rows.as<int64_t>(), out.data(), batch * length, features, cuda::stream());
    return out;
  }
  Tensor out = Tensor::empty({batch, length, features});
  const ConstMatrixMap rows = matrix_of_rows(table);
  MatrixMap destination = matrix_of_rows(out);
#pragma omp parallel for if (out.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < batch * length; ++t) destination.row(t) = rows.row(ids[t]);
  return out;
}

// dL/dtable[v] = Σ_{(b, l): ids[b·L + l] = v} grad_out[b, l]     grad_out (B, L, D) → (V, D)
// Serial: ids repeat, and a fixed order keeps the sums reproducible.
Tensor embedding_backward(const Tensor& grad_out, const std::vector<int32_t>& ids, int64_t vocab_size) {
  check_shape(grad_out, {-1, -1, -1}, "embedding_backward: grad_out");
  const int64_t length = grad_out.size(1);
  if (static_cast<int64_t>(ids.size()) != grad_out.size(0) * length) {
    throw ShapeError("embedding_backward: ids: expected B*L = " + std::to_string(grad_out.size(0) * length) +
                     " values for grad_out of shape " + grad_out.shape_string() + ", found " +
                     std::to_string(ids.size()));
  }
  check_ids("embedding_backward", ids, length, vocab_size);
  if (common_device("embedding_backward", {&grad_out}) == Device::cuda) {
    // A scatter-add of the gradient rows into the table rows of their ids, in position order per row
    // (the launcher of scatter_add_rows: deterministic, the CPU's order).
    Tensor grad_table({vocab_size, grad_out.size(2)}, Device::cuda);
    scatter_add_rows_by_destination_cuda(grad_table.data(), grad_out.data(), ids, vocab_size, nullptr,
                                         grad_out.size(2), cuda::stream());
    return grad_table;
  }
  Tensor grad_table({vocab_size, grad_out.size(2)});
  const ConstMatrixMap source = matrix_of_rows(grad_out);
  MatrixMap destination = matrix_of_rows(grad_table);
  for (size_t t = 0; t < ids.size(); ++t) destination.row(ids[t]) += source.row(static_cast<int64_t>(t));
  return grad_table;
}

}  // namespace mr1
