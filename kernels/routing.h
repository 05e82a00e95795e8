// The routing ops every router is built from: top-k choice, expert capacity and dropping, and the
// balancing losses with their gradients. Shape letters: T tokens (B·L), X experts, k choices per token.
// Routing works on small (T, X) matrices; inputs are CPU tensors (a CUDA caller copies them over).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

// The k largest scores of each row of scores (T, X), best first; ties go to the lowest index.
// index and value: T·k, row-major (token t's choices at t·k .. t·k + k − 1).
void top_k(const Tensor& scores, int64_t k, std::vector<int32_t>& index, std::vector<float>& value);

// C = max(floor(capacity_factor · T / X), min_capacity); capacity_factor <= 0 means unlimited (−1).
int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t experts, int64_t min_capacity);

// Assignments expert (T·k) claim slots of their expert in order: choice rank r = 0 .. k − 1 first, then
// token t in flattened order b·L + l. An assignment whose expert already holds `capacity` assignments is
// set to −1 (dropped); so is every assignment of a masked token (token_mask[t] == 0). capacity < 0: no
// limit. Returns the number of dropped assignments of unmasked tokens.
int64_t apply_capacity(std::vector<int32_t>& expert, int64_t k, int64_t experts, int64_t capacity,
                       const std::vector<uint8_t>* token_mask);

// Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4) over the unmasked tokens:
//   loss = X · Σ_j f_j · P_j,  f_j = fraction of tokens whose first choice is j, P_j = mean of probs[:, j].
// first_choice: T (ignored for masked tokens). Also returns f (X) and P (X).
double load_balance_loss(const Tensor& probs, const std::vector<int32_t>& first_choice,
                         const std::vector<uint8_t>* token_mask, std::vector<double>* fraction,
                         std::vector<double>* mean_probability);
// Adds scale · dloss/dprobs to grad_probs (T, X): X · f_j / T on every unmasked row (f held fixed).
void load_balance_loss_backward(Tensor& grad_probs, const std::vector<double>& fraction,
                                const std::vector<uint8_t>* token_mask, float scale);

// Router z-loss (ST-MoE, Zoph et al. 2022): mean over unmasked tokens of logsumexp(logits[t])².
double router_z_loss(const Tensor& logits, const std::vector<uint8_t>* token_mask);
// Adds scale · dz/dlogits to grad_logits (T, X): 2 · lse_t · softmax(logits[t]) / T on unmasked rows.
void router_z_loss_backward(Tensor& grad_logits, const Tensor& logits, const std::vector<uint8_t>* token_mask,
                            float scale);

// Mean over unmasked tokens of the entropy of probs[t] divided by log X (1 = uniform); 0 when X = 1.
double normalized_router_entropy(const Tensor& probs, const std::vector<uint8_t>* token_mask);

// Number of unmasked tokens: T when token_mask is null.
int64_t unmasked_count(int64_t tokens, const std::vector<uint8_t>* token_mask);

}  // namespace mr1
