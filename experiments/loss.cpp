// The LM loss and its targets.
#include "experiments/loss.h"

#include <stdexcept>

#include "kernels/cross_entropy.h"

namespace mr1 {

LossResult language_model_loss(const ModelOutput& output, const std::vector<int32_t>& targets, bool compute_grad) {
  if (!output.logits.defined()) {
    throw std::invalid_argument("the LM loss needs logits: set model.vocab_size > 0");
  }
  const CrossEntropyResult entropy = cross_entropy(output.logits, targets, compute_grad);
  LossResult result;
  result.lm_loss = entropy.loss;
  result.aux_loss = output.aux_loss;
  result.loss = entropy.loss + output.aux_loss;
  result.scored = entropy.scored;
  result.correct = entropy.correct;
  result.grad_logits = entropy.grad_logits;
  return result;
}

std::vector<int32_t> next_token_targets(const ModelInput& input) {
  const int64_t B = input.batch, L = input.length;
  if (static_cast<int64_t>(input.tokens.size()) != B * L) {
    throw std::invalid_argument("next-token targets need token ids (B·L of them)");
  }
  std::vector<int32_t> targets(static_cast<size_t>(B * L), -1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t + 1 < L; ++t) {
      const size_t next = static_cast<size_t>(b * L + t + 1);
      if (input.mask.empty() || input.mask[next]) targets[static_cast<size_t>(b * L + t)] = input.tokens[next];
    }
  }
  return targets;
}

}  // namespace mr1
