// The training loss of DESIGN.md §2: mean cross-entropy over the scored positions plus every MoE
// layer's aux losses, with its gradient with respect to the logits.
#pragma once

#include <cstdint>
#include <vector>

#include "blocks/model.h"

namespace mr1 {

struct LossResult {
  double loss = 0;          // lm_loss + aux_loss: what the optimizer minimises
  double lm_loss = 0;       // mean cross-entropy over the scored positions
  double aux_loss = 0;      // Σ over MoE layers of aux and z losses (coefficients applied)
  int64_t scored = 0;
  int64_t correct = 0;      // scored positions whose arg-max is the target
  Tensor grad_logits;       // (B, L, V) dlm_loss/dlogits, when asked for
  double accuracy() const { return scored > 0 ? static_cast<double>(correct) / scored : 0.0; }
};

// targets: B·L, −1 = not scored. Needs output.logits.
LossResult language_model_loss(const ModelOutput& output, const std::vector<int32_t>& targets, bool compute_grad);

// The LM targets of DESIGN.md §2: position (b, t) predicts tokens[b, t + 1] when that target is unmasked;
// the last position of each row and masked targets are not scored.
std::vector<int32_t> next_token_targets(const ModelInput& input);

}  // namespace mr1
