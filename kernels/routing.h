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

// C = max(min(floor(capacity_factor · T / X), T), min_capacity); capacity_factor <= 0 means unlimited (−1).
// The cap at T changes nothing (no expert gets more than T tokens) but keeps C finite for any factor.
int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t experts, int64_t min_capacity);

// Assignments expert (T·k) claim slots of their expert in order: choice rank r = 0 .. k − 1 first, then
// token t in flattened order b·L + l. An assignment whose expert already holds `capacity` assignments is
// set to −1 (dropped); so is every assignment of a masked token (token_mask[t] == 0). capacity < 0: no
// limit. Returns the number of dropped assignments of unmasked tokens.
int64_t apply_capacity(std::vector<int32_t>& expert, int64_t k, int64_t experts, int64_t capacity,
                       const std::vector<uint8_t>* token_mask);

// The fraction of the assignments of unmasked tokens that went to each expert:
//   load[j] = #{a : choice[a] = j} / #{a : choice[a] >= 0},  over the unmasked tokens' a = t·k + r.
// choice: T·k, −1 = none (not counted). All 0 when nothing is assigned. Returns X values.
std::vector<double> assignment_load(const std::vector<int32_t>& choice, int64_t k, int64_t experts,
                                    const std::vector<uint8_t>* token_mask);

// Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4) over the unmasked tokens:
//   loss = X · Σ_j f_j · P_j,  f_j = fraction of tokens whose first choice is j, P_j = mean of probs[:, j].
// first_choice: T (ignored for masked tokens). Also returns f (X) and P (X).
double load_balance_loss(const Tensor& probs, const std::vector<int32_t>& first_choice,
                         const std::vector<uint8_t>* token_mask, std::vector<double>* fraction,
                         std::vector<double>* mean_probability);
// The same with k counted choices per token (choice: T·k, −1 = none): f = assignment_load(choice). With
// k = K of X experts this is DeepSeek-V3's balance loss (Liu et al. 2024, eqs. 17-20), whose
// f_i = X/(K·T)·count_i is X times this f.
double load_balance_loss(const Tensor& probs, const std::vector<int32_t>& choice, int64_t k,
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

// The gates of the assignments (Shazeer et al. 2017; GShard, Lepikhin et al. 2020; DeepSeek-V3):
//   gate[t·k + r] = scores[t, e] / S_t,   e = chosen[t·k + r],
//   S_t = Σ_r' scores[t, chosen[t·k + r']] (the token's chosen experts, before capacity) when normalize, else 1;
// 0 where kept[t·k + r] < 0 (dropped or masked). chosen, kept: T·k, −1 = none; kept[a] is chosen[a] or −1.
std::vector<float> gather_gates(const Tensor& scores, const std::vector<int32_t>& chosen,
                                const std::vector<int32_t>& kept, int64_t k, bool normalize);
// dL/dscores (T, X) from dL/dgate (T·k), the choices held fixed. With G_a = grad_gate[a] where kept, else 0:
//   without normalize: dL/dscores[t, e_a] = G_a;
//   with normalize:    dL/dscores[t, e_a] = (G_a − Σ_b G_b · gate_b) / S_t   over the token's chosen a, b.
Tensor gather_gates_backward(const std::vector<float>& grad_gate, const Tensor& scores,
                             const std::vector<int32_t>& chosen, const std::vector<int32_t>& kept, int64_t k,
                             bool normalize);

// Sinkhorn balancing (Sinkhorn & Knopp 1967), as BASE layers route by a balanced assignment (Lewis et al.
// 2021) and S-BASE approximates it (Clark et al. 2022): starting from M = exp(logits) over the T unmasked
// rows, `iterations` rounds of scaling every row to sum 1 and then every column to sum T / X. Returns the
// scaled matrix (T, X); rows of masked tokens are 0. Computed in log space in double precision.
Tensor sinkhorn_balance(const Tensor& logits, int64_t iterations, const std::vector<uint8_t>* token_mask);

// Expert choice (Zhou et al. 2022): for each expert j the min(capacity, T) unmasked tokens with the
// largest scores[t, j], best first; ties go to the lower token index. Returns X lists of token indices.
std::vector<std::vector<int64_t>> top_tokens(const Tensor& scores, int64_t capacity,
                                             const std::vector<uint8_t>* token_mask);

// Mean over unmasked tokens of the entropy of probs[t] divided by log X (1 = uniform); 0 when X = 1.
double normalized_router_entropy(const Tensor& probs, const std::vector<uint8_t>* token_mask);

// Number of unmasked tokens: T when token_mask is null.
int64_t unmasked_count(int64_t tokens, const std::vector<uint8_t>* token_mask);

}  // namespace mr1
