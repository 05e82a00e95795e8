// Cross-entropy of logits against integer targets, fused with its gradient.
// Shape letters: T positions, V classes.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

struct CrossEntropyResult {
  double loss = 0;      // mean over the scored positions of −log softmax(logits[t])[target[t]]
  int64_t scored = 0;   // positions whose target is >= 0
  int64_t correct = 0;  // scored positions whose argmax (lowest index on ties) equals the target
  Tensor grad_logits;   // (T, V) dloss/dlogits = (softmax − onehot)/scored on scored rows, 0 elsewhere;
                        // defined only when asked for
};

// logits (T, V) (any leading shape flattened); targets: T values, −1 = not scored.
CrossEntropyResult cross_entropy(const Tensor& logits, const std::vector<int32_t>& targets, bool compute_grad);

}  // namespace mr1
