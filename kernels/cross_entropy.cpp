// Cross-entropy on the CPU, fused with its gradient: one pass per row (T rows, parallel), sums in double.
// Shape letters: T positions (leading axes flattened), V classes.
#include "kernels/cross_entropy.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cross_entropy_cuda.h"
#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"

namespace mr1 {

// loss = (1/S) Σ_{t scored} (logsumexp(logits[t]) − logits[t, target[t]]),  S = #{t : target[t] >= 0}
// grad_logits[t] = (softmax(logits[t]) − onehot(target[t])) / S on scored rows, 0 elsewhere   (logits' shape)
CrossEntropyResult cross_entropy(const Tensor& logits, const std::vector<int32_t>& targets, bool compute_grad) {
  check_last_axis(logits, -1, "cross_entropy: logits");
  const int64_t rows = row_count(logits);
  const int64_t classes = logits.size(-1);
  if (static_cast<int64_t>(targets.size()) != rows) {
    throw ShapeError("cross_entropy: targets: expected T = " + std::to_string(rows) + " values for logits of shape " +
                     logits.shape_string() + ", found " + std::to_string(targets.size()));
  }
  CrossEntropyResult result;
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] < -1 || targets[t] >= classes) {
      throw std::out_of_range("cross_entropy: target " + std::to_string(targets[t]) + " at position " +
                              std::to_string(t) + " is outside [0, " + std::to_string(classes) + ") and is not -1");
    }
    if (targets[t] >= 0) ++result.scored;
  }
  const double inverse_scored = result.scored > 0 ? 1.0 / static_cast<double>(result.scored) : 0.0;
  if (common_device("cross_entropy", {&logits}) == Device::cuda) {
    // Per-row losses and hits on the device, summed here in row order.
    if (compute_grad) result.grad_logits = Tensor(logits.shape(), Device::cuda);
    const cuda::DeviceBuffer device_targets = cuda::upload(targets);
    cuda::DeviceBuffer row_loss(static_cast<size_t>(rows) * sizeof(double)),
        row_correct(static_cast<size_t>(rows) * sizeof(int32_t));
    cross_entropy_cuda(logits.data(), device_targets.as<int32_t>(), compute_grad ? result.grad_logits.data() : nullptr,
                       row_loss.as<double>(), row_correct.as<int32_t>(), rows, classes, inverse_scored, cuda::stream());
    double total_loss = 0;
    for (double loss : cuda::download<double>(row_loss, static_cast<size_t>(rows))) total_loss += loss;
    for (int32_t hit : cuda::download<int32_t>(row_correct, static_cast<size_t>(rows))) result.correct += hit;
    result.loss = total_loss * inverse_scored;
    return result;
  }
  if (compute_grad) result.grad_logits = Tensor(logits.shape());

  // Each row's loss, added in row order after the parallel loop: the same bits at any thread count.
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  std::vector<uint8_t> row_correct(static_cast<size_t>(rows), 0);
#pragma omp parallel for if (logits.numel() >= kParallelMinimumWork)
  for (int64_t t = 0; t < rows; ++t) {
    const int32_t target = targets[t];
    if (target < 0) continue;
    const float* row = logits.data() + t * classes;
    int64_t best = 0;  // argmax, the lowest index on ties
    for (int64_t j = 1; j < classes; ++j) {
      if (row[j] > row[best]) best = j;
    }
    const double largest = row[best];
    double exp_total = 0;
    for (int64_t j = 0; j < classes; ++j) exp_total += std::exp(row[j] - largest);
    row_loss[static_cast<size_t>(t)] = largest + std::log(exp_total) - row[target];
    row_correct[static_cast<size_t>(t)] = best == target;
    if (compute_grad) {
      float* grad = result.grad_logits.data() + t * classes;
      for (int64_t j = 0; j < classes; ++j) {
        const double probability = std::exp(row[j] - largest) / exp_total;
        grad[j] = static_cast<float>((probability - (j == target ? 1.0 : 0.0)) * inverse_scored);
      }
    }
  }
  double total_loss = 0;
  int64_t correct = 0;
  for (int64_t t = 0; t < rows; ++t) {
    total_loss += row_loss[static_cast<size_t>(t)];
    correct += row_correct[static_cast<size_t>(t)];
  }
  result.loss = total_loss * inverse_scored;
  result.correct = correct;
  return result;
}

}  // namespace mr1
