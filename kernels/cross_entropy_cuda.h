// CUDA launcher of the cross-entropy fused with its gradient. Raw device pointers; plain C++ header.
// Shape letters: T positions, V classes.
#pragma once

#include <cstdint>

namespace mr1 {

// Per row t with targets[t] >= 0: row_loss[t] = logsumexp(logits[t]) − logits[t, target],
// row_correct[t] = (argmax, lowest index on ties) == target, and when grad_logits is not null
// grad_logits[t] = (softmax(logits[t]) − onehot(target)) · inverse_scored. Rows with target −1 get
// loss 0, correct 0 and leave grad_logits untouched (the caller zero-fills it).
// logits, grad_logits (T, V); targets, row_loss, row_correct (T).
void cross_entropy_cuda(const float* logits, const int32_t* targets, float* grad_logits, double* row_loss,
                        int32_t* row_correct, int64_t T, int64_t V, double inverse_scored, void* stream);

}  // namespace mr1
